"""A scalar head on a causal LM: the reward model of stage rm, and the value model of RLHF.

The head reads the last hidden state of the last real (non-padding) token. It is saved beside the
model or adapter as value_head.safetensors with LLaMA-Factory's and TRL's key names
(v_head.summary.weight / .bias), so their tools and ours read each other's reward models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

VALUE_HEAD_FILE = "value_head.safetensors"
_KEYS = {"weight": "v_head.summary.weight", "bias": "v_head.summary.bias"}


def hidden_size_of(config: Any) -> int | None:
    """The width of the last hidden state (what the LM head reads), or None for a model that has no single one.
    OPT projects its last hidden state to word_embed_proj_dim before the head."""
    for c in (config, getattr(config, "text_config", None)):
        for key in ("word_embed_proj_dim", "hidden_size"):
            size = getattr(c, key, None)
            if isinstance(size, int):
                return size
    return None


class ValueHeadModel(nn.Module):
    """``lm`` (a causal LM, PEFT-wrapped or not) plus a linear head giving one score per row."""

    def __init__(self, lm: nn.Module, hidden_size: int):
        super().__init__()
        self.lm = lm
        self.v_head = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.v_head.weight, std=1 / (hidden_size + 1))  # small scores at the start
        nn.init.zeros_(self.v_head.bias)

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One fp32 score per row [batch], read at each row's last token that is not padding."""
        from rayft_core.train.losses import decoder_hidden

        _, hidden = decoder_hidden(self.lm, batch)
        last = batch["attention_mask"].sum(-1) - 1
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.v_head(h.to(self.v_head.weight.dtype)).squeeze(-1).float()

    def save_pretrained(
        self, out: str | Path, state_dict: dict[str, torch.Tensor] | None = None, **kwargs: Any
    ) -> None:
        """The LM (or its adapter) as usual, and the head in value_head.safetensors.

        ``state_dict``: this module's state gathered under ZeRO-3 (keys lm.* and v_head.*; an adapter run's
        holds only what trained)."""
        lm_state = (
            {k.removeprefix("lm."): v for k, v in state_dict.items() if k.startswith("lm.")} if state_dict else None
        )
        self.lm.save_pretrained(out, state_dict=lm_state, **kwargs)
        self.save_head(out, state_dict)

    def save_head(self, out: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """value_head.safetensors, from ``state_dict``'s v_head.* where given (gathered under ZeRO-3)."""
        save_value_head(
            out, {n: (state_dict[f"v_head.{n}"] if state_dict else p) for n, p in self.v_head.named_parameters()}
        )


def save_value_head(out: str | Path, head: dict[str, torch.Tensor]) -> None:
    """``out``/value_head.safetensors from the head's weight and bias, in fp32."""
    from safetensors.torch import save_file

    save_file(
        {_KEYS[n]: t.detach().float().cpu().contiguous() for n, t in head.items()}, str(Path(out) / VALUE_HEAD_FILE)
    )


def load_value_head(path: str | Path, hidden_size: int) -> nn.Linear:
    """The head saved in ``path``/value_head.safetensors."""
    from safetensors.torch import load_file

    file = Path(path) / VALUE_HEAD_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} holds no {VALUE_HEAD_FILE}: it is not a reward model written by stage rm")
    state = load_file(str(file))
    head = nn.Linear(hidden_size, 1)
    head.load_state_dict({n: state[k] for n, k in _KEYS.items()})
    return head


def load_reward_model(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[ValueHeadModel, Any]:
    """A reward model written by stage rm (an adapter on its base, or a full model) and its tokenizer,
    loaded with plain transformers and PEFT, ready for ``score``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if (path / "adapter_config.json").is_file():
        from peft import PeftConfig, PeftModel

        base_path = PeftConfig.from_pretrained(path).base_model_name_or_path
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
        if base.get_input_embeddings().weight.shape[0] < len(tokenizer):
            base.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the adapter's saved rows replace them
        lm = PeftModel.from_pretrained(base, path)
    else:
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model = ValueHeadModel(lm, hidden_size_of(lm.config))
    model.v_head = load_value_head(path, hidden_size_of(lm.config))
    return model.eval(), tokenizer
