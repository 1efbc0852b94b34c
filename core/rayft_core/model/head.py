"""How a family turns its last hidden state into logits, where that is more than the output head: a scale on the
logits (Cohere multiplies by logit_scale, Granite divides by logits_scaling, HyperCLOVA X multiplies by it) and a
tanh soft-cap (Gemma 2/3, RecurrentGemma, xLSTM). rayft's loss (rayft_core.train.losses) never calls the model's forward, so it
applies these itself; the architecture matrix checks its loss against every family's own.
"""

from __future__ import annotations

from typing import Any

MULTIPLIES_LOGITS_SCALING = {"hyperclovax"}  # the other families with logits_scaling (Granite's) divide by it


def _text(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


def logit_scale(config: Any) -> float:
    """The factor the family multiplies its head's logits by (1.0 for most)."""
    c = _text(config)
    if getattr(c, "logit_scale", None):
        return float(c.logit_scale)
    if getattr(c, "logits_scaling", None):
        scaling = float(c.logits_scaling)
        return scaling if c.model_type in MULTIPLIES_LOGITS_SCALING else 1.0 / scaling
    return 1.0


def logit_softcap(config: Any) -> float | None:
    """The soft-cap c of cap(logits) = c * tanh(logits / c), where the family has one."""
    c = _text(config)
    for key in ("final_logit_softcapping", "output_logit_soft_cap", "logits_soft_cap"):
        if getattr(c, key, None):
            return float(getattr(c, key))
    return None
