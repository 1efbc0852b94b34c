"""Optimizer and learning-rate schedule of a run: AdamW, LoRA+ groups, or GaLore's projected AdamW."""

from __future__ import annotations

import importlib.util
import math

import torch
from torch import nn

from rayft_core.config import GaloreTuning, LoraTuning, RunConfig
from rayft_core.model.adapters import galore_params


def _no_decay(name: str, p: nn.Parameter) -> bool:
    return p.ndim < 2 or "norm" in name.lower()  # biases and norm scales are not decayed


def build_param_groups(model: nn.Module, run: RunConfig) -> list[dict]:
    lr, wd = run.train.learning_rate, run.train.weight_decay
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if isinstance(run.tuning, GaloreTuning):
        t = run.tuning
        projected, rest = galore_params(model, t)
        return [{"params": rest, "lr": lr, "weight_decay": wd},
                {"params": projected, "lr": lr, "weight_decay": wd, "rank": t.rank,
                 "update_proj_gap": t.update_proj_gap, "scale": t.scale, "proj_type": "std"}]
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    ratio = run.tuning.loraplus_lr_ratio if isinstance(run.tuning, LoraTuning) else None
    for name, p in named:
        # LoRA+ (Hayou et al. 2024): B learns ratio x faster than A; with B initialised at zero
        # this gives the adapter's update a larger effective step without destabilising A.
        group_lr = lr * ratio if ratio and "lora_B" in name else lr
        group_wd = 0.0 if _no_decay(name, p) else wd
        groups.setdefault((group_lr, group_wd), []).append(p)
    return [{"params": ps, "lr": g_lr, "weight_decay": g_wd} for (g_lr, g_wd), ps in groups.items()]


def build_optimizer(model: nn.Module, run: RunConfig) -> torch.optim.Optimizer:
    groups = build_param_groups(model, run)
    if isinstance(run.tuning, GaloreTuning):
        if importlib.util.find_spec("galore_torch") is None:
            raise ImportError("tuning.method galore needs galore-torch: pip install 'rayft[galore]'")
        from galore_torch import GaLoreAdamW

        return GaLoreAdamW(groups, lr=run.train.learning_rate)
    return torch.optim.AdamW(groups, lr=run.train.learning_rate, betas=(0.9, 0.999), eps=1e-8)


def lr_lambda(step: int, total_steps: int, warmup_steps: int, kind: str) -> float:
    """Multiplier of the peak learning rate: linear warmup, then cosine/linear decay to 0 or constant."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(progress, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress


def build_scheduler(optimizer: torch.optim.Optimizer, run: RunConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(run.train.warmup_ratio * total_steps)
    kind = run.train.lr_scheduler
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, total_steps, warmup, kind))
