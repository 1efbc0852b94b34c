"""Optimizer and learning-rate schedule of a run: the tuning method's parameter groups (AdamW's decay groups,
LoRA+ learning rates, GaLore's projected weights) and the optimizer it names in OPTIMIZERS."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from rayft_core.config import RunConfig


def _adamw(groups: list[dict], run: RunConfig) -> torch.optim.Optimizer:
    # fused: one pass per tensor, in place. The default (foreach) makes temporaries the size of each tensor, and a
    # ZeRO optimizer steps one flat tensor per group: 2 GB more at the step of a 0.35B model's ZeRO-3 partition.
    return torch.optim.AdamW(groups, lr=run.train.learning_rate, betas=(0.9, 0.999), eps=1e-8, fused=True)


def _galore_adamw(groups: list[dict], run: RunConfig) -> torch.optim.Optimizer:
    missing = run.tuning.missing_dependency()  # galore-torch, and the extra that installs it
    if missing:
        raise ImportError(missing)
    from galore_torch import GaLoreAdamW

    return GaLoreAdamW(groups, lr=run.train.learning_rate)


# name -> (parameter groups, run) -> optimizer. A tuning method names its own (TuningSection.optimizer).
OPTIMIZERS: dict[str, Callable[[list[dict], RunConfig], torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "galore_adamw": _galore_adamw,
}


def build_param_groups(model: nn.Module, run: RunConfig) -> list[dict]:
    return run.tuning.param_groups(model, run)


def build_optimizer(model: nn.Module, run: RunConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[run.tuning.optimizer](build_param_groups(model, run), run)


def lr_lambda(step: int, total_steps: int, warmup_steps: int, kind: str) -> float:
    """Multiplier of the peak learning rate: linear warmup, then cosine/linear decay to 0 or constant."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(progress, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress


def build_scheduler(
    optimizer: torch.optim.Optimizer, run: RunConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(run.train.warmup_ratio * total_steps)
    kind = run.train.lr_scheduler
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, total_steps, warmup, kind))
