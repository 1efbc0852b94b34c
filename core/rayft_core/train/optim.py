"""Optimizer and learning-rate schedule of a run: the tuning method's parameter groups (AdamW's decay groups,
LoRA+ learning rates, GaLore's projected weights) and the optimizer in OPTIMIZERS that the method names (GaLore)
or train.optimizer chooses (AdamW, Muon)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from rayft_core.config import RunConfig
from rayft_core.errors import UserInputError
from rayft_core.plugins import load_object


def _adamw(groups: list[dict], run: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    # fused: one pass per tensor, in place. The default (foreach) makes temporaries the size of each tensor, and a
    # ZeRO optimizer steps one flat tensor per group: 2 GB more at the step of a 0.35B model's ZeRO-3 partition.
    return torch.optim.AdamW(groups, lr=run.train.learning_rate, betas=(0.9, 0.999), eps=1e-8, fused=True)


def _galore_adamw(groups: list[dict], run: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    missing = run.tuning.missing_dependency()  # galore-torch, and the extra that installs it
    if missing:
        raise ImportError(missing)
    from galore_torch import GaLoreAdamW

    return GaLoreAdamW(groups, lr=run.train.learning_rate)


def _apollo_adamw(groups: list[dict], run: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    missing = run.tuning.missing_dependency()  # apollo-torch, and the extra that installs it
    if missing:
        raise ImportError(missing)
    from apollo_torch import APOLLOAdamW

    return APOLLOAdamW(groups, lr=run.train.learning_rate, betas=(0.9, 0.999), eps=1e-8)


def whole_tensors(run: RunConfig, what: str | None = None) -> None:
    """For an optimizer that reads each tensor's shape or switches which ones train (Muon, Adam-mini, BAdam, a
    plug-in's): refuse DeepSpeed's 16-bit optimizer, which hands it flat fp32 copies."""
    from rayft_core.model.loader import resolve_dtype

    if resolve_dtype(run.model.dtype) != torch.float32 and not run.tuning.trains_adapter:  # model.dtype auto on a GPU
        raise UserInputError(WHOLE_16_BIT.format(what or run.train.optimizer))


def _muon(groups: list[dict], run: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    from rayft_core.train.muon import MuonWithAdamW, hidden_matrices

    whole_tensors(run)
    return MuonWithAdamW(groups, hidden_matrices(model), run.train.learning_rate, betas=(0.9, 0.999), eps=1e-8)


def _adam_mini(groups: list[dict], run: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    from rayft_core.train.adam_mini import AdamMini, block_sizes

    whole_tensors(run)
    return AdamMini(groups, block_sizes(model), run.train.learning_rate, betas=(0.9, 0.999), eps=1e-8)


def _badam(groups: list[dict], run: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    from rayft_core.train.block_adam import BlockAdamW, MaskedAdamW

    whole_tensors(run, "BAdam")
    t, lr = run.tuning, run.train.learning_rate
    if t.mode == "ratio":
        return MaskedAdamW(groups, t.update_ratio, t.switch_interval, t.mask, run.train.seed, lr, (0.9, 0.999), 1e-8)
    blocks = t.blocks(model)
    start = t.first_block(len(blocks))
    if start >= len(blocks):
        raise UserInputError(
            f"tuning.start_block: the model has {len(blocks)} layers (0-{len(blocks) - 1}), got {start}"
        )
    return BlockAdamW(
        groups, blocks, t.switch_interval, t.switch_mode, start, run.train.seed, lr=lr, betas=(0.9, 0.999), eps=1e-8
    )


# bitsandbytes' AdamW with 8-bit states (blockwise-quantized moments), or paged (its states in CUDA unified memory,
# evicted to the host under pressure; on CPU bitsandbytes warns and steps unpaged): train.optimizer -> its class.
BITSANDBYTES = {"adamw_8bit": "AdamW8bit", "paged_adamw_8bit": "PagedAdamW8bit", "paged_adamw_32bit": "PagedAdamW32bit"}


def _bitsandbytes(groups: list[dict], run: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"train.optimizer {run.train.optimizer} needs bitsandbytes: pip install 'rayft[qlora]'")
    import bitsandbytes as bnb

    optimizer = getattr(bnb.optim, BITSANDBYTES[run.train.optimizer])
    return optimizer(groups, lr=run.train.learning_rate, betas=(0.9, 0.999), eps=1e-8)


# name -> (parameter groups, run, model) -> optimizer. A tuning method may name its own (TuningSection.optimizer).
OPTIMIZERS: dict[str, Callable[[list[dict], RunConfig, nn.Module], torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "galore_adamw": _galore_adamw,
    "apollo_adamw": _apollo_adamw,
    "muon": _muon,
    "adam_mini": _adam_mini,
    "badam": _badam,
    **dict.fromkeys(BITSANDBYTES, _bitsandbytes),
}
WHOLE_16_BIT = (
    "train.optimizer: {} with 16-bit full-parameter training: DeepSpeed's mixed-precision optimizer hands it "
    "flattened weights; set model.dtype: float32, or train an adapter"
)


def problems(run: RunConfig) -> list[str]:
    """The optimizer's rules, each as 'path: what to change'."""
    if run.train.optimizer == "adamw":
        return []
    out = []
    if run.tuning.optimizer != "adamw":
        out.append(
            f"train.optimizer: tuning method {run.tuning.method} steps with its own optimizer "
            f"({run.tuning.optimizer}); leave train.optimizer at adamw"
        )
    name = run.train.optimizer
    if (
        name in BITSANDBYTES or name not in OPTIMIZERS
    ):  # a plug-in states its own rules (docs/extending.md)  # states quantized per block of any tensor: every ZeRO stage hands it what it needs
        return out
    if run.deepspeed.zero_stage:
        out.append(
            f"train.optimizer: {name} reads each weight's shape and ZeRO-1/2/3 hand the optimizer flat partitions; "
            "set deepspeed.zero_stage: 0 (every worker holds the model, gradients are all-reduced)"
        )
    if run.model.dtype in ("bfloat16", "float16") and not run.tuning.trains_adapter:
        out.append(WHOLE_16_BIT.format(name))
    return out


def build_param_groups(model: nn.Module, run: RunConfig) -> list[dict]:
    return run.tuning.param_groups(model, run)


def build_optimizer(model: nn.Module, run: RunConfig) -> torch.optim.Optimizer:
    groups = build_param_groups(model, run)
    own = run.tuning.make_optimizer(groups, run, model)  # a plug-in method's (docs/extending.md)
    if own is not None:
        return own
    name = run.train.optimizer if run.tuning.optimizer == "adamw" else run.tuning.optimizer
    factory = OPTIMIZERS.get(name) or load_object(name, "train.optimizer")  # else a plug-in optimizer
    return factory(groups, run, model)


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
