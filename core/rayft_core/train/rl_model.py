"""The four roles of RLHF on one base model (LlamaFactory's model sharing, its paper's section 3.3).

- policy: the LoRA adapter "default" (fresh, or stage.init_adapter), the only trainable weights
  besides the value head;
- value (PPO): a linear head on the policy's last hidden state, so one forward gives both;
- reward: the adapter and value head written by `stage: rm`, loaded beside the policy as the frozen
  adapter "reward" on the same base; a full reward model is a separate frozen model;
- reference: the base with the adapters disabled (PEFT's disable_adapter).

So the base is held once, where four separate models would hold it four times.

A full-parameter policy (tuning.method full) is the base itself, trained whole: the reference is then a separate
frozen copy of the base (sharded like the policy under ZeRO-3), and the reward a full reward model or functions.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rayft_core.config import RunConfig
from rayft_core.errors import UserInputError
from rayft_core.model.value_head import VALUE_HEAD_FILE, ValueHeadModel, hidden_size_of, load_value_head
from rayft_core.model.zero3 import gathered, shape
from rayft_core.train.losses import decoder_hidden, labelled_entropy, labelled_logps

POLICY, REWARD = "default", "reward"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")  # what PEFT needs to load an adapter


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def check_reward_model(path: str | Path, base_path: str | Path, vocab_size: int) -> None:
    """A reward model that cannot score this policy's responses is refused before anything starts."""
    path = Path(path)
    if not (path / VALUE_HEAD_FILE).is_file():
        raise UserInputError(
            f"stage.reward_model: {path} holds no {VALUE_HEAD_FILE}; give the output of a `stage: rm` run"
        )
    if is_adapter(path):  # loaded on this run's base: it must have been trained on it
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        ours, theirs = _shape(base_path), _shape(base) if base and (Path(base) / "config.json").is_file() else None
        if theirs is None:
            raise UserInputError(
                f"stage.reward_model: the reward adapter's base {base!r} is not a model directory "
                "here; it must be this run's base, on which it is loaded"
            )
        if ours != theirs:
            diff = ", ".join(f"{k} {theirs[k]} vs {ours[k]}" for k in ours if ours[k] != theirs[k])
            raise UserInputError(
                f"stage.reward_model: the reward adapter was trained on another base ({base}: {diff} "
                f"in this run's {base_path}); the roles share one base, so train the reward model on it"
            )
    reward_vocab = _vocab_size(path)
    if reward_vocab is not None and reward_vocab != vocab_size:
        raise UserInputError(
            f"stage.reward_model: its tokenizer has {reward_vocab} tokens and the policy's has "
            f"{vocab_size}; the reward model must read the policy's tokens"
        )


def _shape(model_dir: str | Path) -> dict[str, Any]:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    text = config.get("text_config", config)
    return {
        k: text.get(k, config.get(k))
        for k in (
            "model_type",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "vocab_size",
        )
    }


def _vocab_size(model_dir: Path) -> int | None:
    if not (model_dir / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(model_dir))


class RlModel(nn.Module):
    """The roles on one base; DeepSpeed wraps this module (the frozen reward weights ride along, and are
    sharded with the rest under ZeRO-3)."""

    def __init__(
        self,
        lm: nn.Module,
        value_head: nn.Linear | None,
        reward_head: nn.Linear | None,
        reward_model: ValueHeadModel | None,
        reference: nn.Module | None = None,
    ):
        super().__init__()
        self.lm, self.value_head, self.reward_head, self.reward_model = lm, value_head, reward_head, reward_model
        self.reference = reference  # a full-parameter policy's frozen base; None: the base under the adapters

    @property
    def full(self) -> bool:
        """The policy is the whole model (no adapter)."""
        return not hasattr(self.lm, "peft_config")

    @classmethod
    def build(cls, base: nn.Module, run: RunConfig, reference: nn.Module | None = None) -> RlModel:
        """The roles on ``base``; ``reference``: a frozen copy of the base, for a full-parameter policy."""
        from peft import PeftModel

        from rayft_core.model.adapters import apply_tuning

        st = run.stage
        if st.init_adapter:
            lm = PeftModel.from_pretrained(base, st.init_adapter, adapter_name=POLICY, is_trainable=True)
        else:
            lm = apply_tuning(base, run)
        size = hidden_size_of(base.config)
        reward_head = reward_model = None
        if st.reward_model and is_adapter(st.reward_model):
            lm.load_adapter(st.reward_model, adapter_name=REWARD, is_trainable=False)
            lm.set_adapter(POLICY)
            reward_head = load_value_head(st.reward_model, size).requires_grad_(False)
        elif st.reward_model:
            from rayft_core.model.value_head import load_reward_model

            reward_model = load_reward_model(st.reward_model, dtype=next(base.parameters()).dtype)[0].requires_grad_(
                False
            )
        value_head = None
        if st.value_head:
            value_head = nn.Linear(size, 1)
            nn.init.normal_(value_head.weight, std=1 / (size + 1))
            nn.init.zeros_(value_head.bias)
        if reference is not None:
            reference.requires_grad_(False)
        return cls(lm, value_head, reward_head, reward_model, reference)

    def forward_policy(
        self, batch: dict[str, torch.Tensor], entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """log p(token) of every response token [B, T-1] (0 elsewhere), the value of each position
        [B, T-1] (PPO) and, when asked, each position's entropy [B, T-1] (never part of the graph)."""
        base, hidden = decoder_hidden(self.lm, batch)
        logps, keep = labelled_logps(base, hidden, batch["labels"])
        values = None
        if self.value_head is not None:
            values = self.value_head(hidden[:, :-1].to(self.value_head.weight.dtype)).squeeze(-1).float()
        return logps, values, labelled_entropy(base, hidden, keep) if entropy else None

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.reference is not None:
            base, hidden = decoder_hidden(self.reference, batch)
            return labelled_logps(base, hidden, batch["labels"])[0]
        with self.lm.disable_adapter():
            base, hidden = decoder_hidden(self.lm, batch)
            return labelled_logps(base, hidden, batch["labels"])[0]

    @property
    def has_reward_model(self) -> bool:
        return self.reward_head is not None or self.reward_model is not None

    @torch.no_grad()
    def reward_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The reward model's score of each whole sequence [B], read at its last real token."""
        if self.reward_model is not None:
            return self.reward_model.score(batch)
        with self._active(REWARD):
            _, hidden = decoder_hidden(self.lm, batch)
        last = batch["attention_mask"].sum(-1) - 1
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.reward_head(h.to(self.reward_head.weight.dtype)).squeeze(-1).float()

    @contextlib.contextmanager
    def _active(self, adapter: str) -> Iterator[None]:
        """Run with another adapter; PEFT's set_adapter changes which weights train, so those flags are restored."""
        flags = [(p, p.requires_grad) for p in self.lm.parameters()]
        self.lm.set_adapter(adapter, inference_mode=True)
        try:
            yield
        finally:
            self.lm.set_adapter(POLICY)
            for p, flag in flags:
                p.requires_grad_(flag)

    def policy_adapter_files(self, rank: int) -> dict[str, bytes] | None:
        """The policy adapter as PEFT saves it (adapter_model.safetensors + adapter_config.json), on rank 0;
        what the rollout engines load. Under ZeRO-3 every rank takes part in gathering it."""
        params = [p for n, p in self.lm.named_parameters() if f".{POLICY}." in n]
        with gathered(params):
            if rank != 0:
                return None
            with tempfile.TemporaryDirectory(prefix="rayft-policy-") as d:
                self.lm.save_pretrained(d, selected_adapters=[POLICY], save_embedding_layers=False)
                return {name: (Path(d) / name).read_bytes() for name in ADAPTER_FILES}

    def policy_weights(
        self, rank: int, group_bytes: int = 256 * 2**20
    ) -> Iterator[tuple[list[tuple[str, torch.Tensor]], bool]]:
        """A full-parameter policy's weights, a group of parameters of at most ``group_bytes`` at a time (under
        ZeRO-3 gathered group by group; every rank takes part), as (name, CPU tensor) on rank 0 (empty elsewhere):
        what the rollout engines load after an update, without the model ever being whole in one message; and
        whether the group is the last."""
        group: list[tuple[str, nn.Parameter]] = []
        size = 0
        params = list(self.lm.named_parameters())
        for i, (name, p) in enumerate(params):
            group.append((name, p))
            size += shape(p).numel() * p.element_size()
            if size >= group_bytes or i == len(params) - 1:
                with gathered([q for _, q in group]):
                    weights = [(n, q.detach().to("cpu", copy=True)) for n, q in group] if rank == 0 else []
                yield weights, i == len(params) - 1
                group, size = [], 0

    def save_pretrained(
        self, out: str | Path, state_dict: dict[str, torch.Tensor] | None = None, **kwargs: Any
    ) -> None:
        """The run's output: the policy adapter alone (the reward adapter is an input, the value head a
        training aid), loadable with PeftModel.from_pretrained like any SFT adapter; a full-parameter policy as a
        whole model."""
        lm_state = (
            {k.removeprefix("lm."): v for k, v in state_dict.items() if k.startswith("lm.")} if state_dict else None
        )
        if self.full:
            self.lm.save_pretrained(out, state_dict=lm_state, **kwargs)
        else:
            self.lm.save_pretrained(out, state_dict=lm_state, selected_adapters=[POLICY], **kwargs)
