"""Stages ppo and grpo as the rest of rayft sees them: rows become prompts, the model is the shared base with
its roles (rayft_core.train.rl_model), and the driver checks the rewards first. They train in
rayft_core.train.rlhf."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from rayft_core.config import RunConfig
from rayft_core.data.tokenize import encode_prompts
from rayft_core.errors import UserInputError
from rayft_core.train.stage import Stage

if TYPE_CHECKING:
    from rayft_core.model.loader import ModelFacts


class RlStage(Stage):
    """Rows -> prompts (rendered up to the assistant's turn), their last user turn, and the reference answer
    (the row's own answer, handed to reward functions; None where the row has none)."""

    columns = ("prompt_input_ids", "prompt", "reference")

    def __init__(self, name: str):
        self.name = name

    def encode_rows(self, rows: list[dict], tokenizer: Any, run: RunConfig) -> dict[str, list]:
        conversations, references = [], []
        for row in rows:
            messages = row["messages"]
            answered = messages[-1]["role"] == "assistant"
            references.append(messages[-1]["content"] if answered else None)
            conversations.append(messages[:-1] if answered else messages)
        ids = encode_prompts(
            tokenizer, conversations, run.data.max_seq_len - run.stage.max_new_tokens, _tools(rows, run)
        )
        prompts = [next((m["content"] for m in reversed(c) if m["role"] == "user"), "") for c in conversations]
        return {
            "prompt_input_ids": ids,
            "prompt": prompts,
            "reference": references,
            "row_of_example": list(range(len(rows))),
        }

    def build_model(self, run: RunConfig, tokenizer: Any) -> nn.Module:
        from rayft_core.model.loader import load_model
        from rayft_core.train.preference import without_dropout
        from rayft_core.train.rl_model import RlModel

        # a full-parameter policy trains the base itself: the reference is a frozen copy of it
        reference = None if run.tuning.trains_adapter else without_dropout(load_model(run, tokenizer))
        return RlModel.build(without_dropout(load_model(run, tokenizer)), run, reference)

    def scheduler_steps(self, run: RunConfig, plan_steps: int) -> int:
        return plan_steps * run.stage.ppo_epochs  # one optimizer step per pass over each rollout batch

    def check(self, run: RunConfig, model: ModelFacts) -> list[str]:
        """The rewards and tools load and fit this base; the initial adapter is one."""
        from rayft_core.train.agent import Tools
        from rayft_core.train.rewards import Rewards
        from rayft_core.train.rl_model import check_reward_model, is_adapter

        st, problems = run.stage, []
        try:
            Rewards(st.reward_functions)  # each function found, importable, and taking what it will be given
            Tools(st.tools)  # each tool found and described to the model
        except UserInputError as e:
            problems.append(str(e))
        if st.reward_model and not Path(st.reward_model).is_dir():
            problems.append(f"stage.reward_model: no directory {st.reward_model}")
        elif st.reward_model:
            try:
                check_reward_model(st.reward_model, run.model.name_or_path, len(model.tokenizer))
            except UserInputError as e:
                problems.append(str(e))
        if st.init_adapter and not is_adapter(st.init_adapter):
            problems.append(
                f"stage.init_adapter: {st.init_adapter} is not a LoRA adapter (adapter_config.json missing)"
            )
        return problems


def _tools(rows: list[dict], run: RunConfig) -> list[list[dict] | None]:
    """Each row's tools for its prompt: its own, and the stage's (stage.tools), which the model may call."""
    stage_tools = run.stage.tools
    if not stage_tools:
        return [r.get("tools") for r in rows]
    from rayft_core.train.agent import Tools

    described = Tools(stage_tools).descriptions
    own = [json.loads(r["tools"]) if isinstance(r.get("tools"), str) else r.get("tools") or [] for r in rows]
    return [tools + described for tools in own]


PPO, GRPO = RlStage("ppo"), RlStage("grpo")
