"""Apply a tuning method to a loaded model: decide exactly which parameters train.

full: everything; freeze: the last N decoder layers (+ named modules); lora: PEFT adapters
(rsLoRA, DoRA, PiSSA init, QLoRA on a bitsandbytes base); galore: everything, with the optimizer
projecting gradients of 2-D weights (see rayft_core.train.optim).

Each method's code is in its module of rayft_core.methods (its ``apply``); the helpers that name a model's
layers are in rayft_core.methods.layers and importable from here too.
"""

from __future__ import annotations

from torch import nn

from rayft_core.config import RunConfig
from rayft_core.methods.layers import TuningError, decoder_layers, linear_module_names, resolve_targets
from rayft_core.model.zero3 import numel

__all__ = [
    "TuningError",
    "apply_tuning",
    "count_parameters",
    "decoder_layers",
    "linear_module_names",
    "resolve_targets",
]


def apply_tuning(model: nn.Module, run: RunConfig) -> nn.Module:
    return run.tuning.apply(model, run)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a 4-bit weight counts its unpacked elements, a ZeRO-3 partition its
    whole parameter."""
    trainable = total = 0
    for p in model.parameters():
        n = numel(p) * (2 if p.__class__.__name__ == "Params4bit" else 1)
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
