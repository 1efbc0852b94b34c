"""The run config's hyperparameters set into a live engine: after a checkpoint is loaded, and where train.schedule
changes them (rayft_core.schedule names the keys).

A DeepSpeed checkpoint holds the optimizer's param groups and the learning-rate scheduler's base rates; loading one
brings back the values of the run that wrote it. The run resuming it may have other values: a run resumed with a new
train.learning_rate, a PBT trial continuing another trial's checkpoint with perturbed values. The config wins.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from rayft_core.config import RunConfig
from rayft_core.train.optim import build_param_groups, lr_lambda


def apply(engine: Any, run: RunConfig, total_steps: int) -> None:
    """Set ``run``'s learning rates (with the schedule's shape and warmup), weight decay and LoRA dropout into
    ``engine``; ``total_steps``: the steps the learning-rate schedule spans. The step count stays the engine's."""
    scheduler = engine.lr_scheduler
    if scheduler is None:  # DeepSpeed's own optimizer (offloaded): train.schedule refuses it; a resume keeps its state
        return
    model = engine.module
    groups, live = build_param_groups(model, run), scheduler.optimizer.param_groups
    if len(groups) != len(live):
        raise RuntimeError(f"the run's optimizer has {len(live)} parameter groups, its config gives {len(groups)}")
    warmup, kind = int(run.train.warmup_ratio * total_steps), run.train.lr_scheduler
    scheduler.lr_lambdas = [lambda s: lr_lambda(s, total_steps, warmup, kind)] * len(live)
    scheduler.base_lrs = [g.get("lr", run.train.learning_rate) for g in groups]
    for group, fresh, base in zip(live, groups, scheduler.base_lrs):
        group["weight_decay"] = fresh.get("weight_decay", run.train.weight_decay)
        group["initial_lr"], group["lr"] = base, base * scheduler.lr_lambdas[0](scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in live]  # what get_last_lr() (train/lr) reports until the next step
    dropout = getattr(run.tuning, "dropout", None)
    if dropout is not None:
        set_lora_dropout(model, dropout)


def set_lora_dropout(model: nn.Module, p: float) -> None:
    """PEFT builds each LoRA layer's dropout once (an Identity where p is 0); these replace them."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict):
            for name in list(dropouts):
                dropouts[name] = (nn.Dropout(p) if p > 0 else nn.Identity()).train(module.training)
