"""Stages ppo and grpo as the data pipeline sees them: rows become prompts. (They train in
rayft_core.train.rlhf, not in the supervised loop.)"""

from __future__ import annotations

from typing import Any

from rayft_core.config import RunConfig
from rayft_core.data.tokenize import encode_prompts
from rayft_core.train.stage import Stage


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
        ids = encode_prompts(tokenizer, conversations, run.data.max_seq_len - run.stage.max_new_tokens,
                             [r.get("tools") for r in rows])
        prompts = [next((m["content"] for m in reversed(c) if m["role"] == "user"), "") for c in conversations]
        return {"prompt_input_ids": ids, "prompt": prompts, "reference": references, "row_of_example": list(range(len(rows)))}

    def objective(self, run, tokenizer, device, ds_config):
        raise TypeError(f"stage {self.name} trains in rayft_core.train.rlhf.rl_worker, not the supervised loop")



PPO, GRPO = RlStage("ppo"), RlStage("grpo")
