"""Apply a tuning method to a loaded model: decide exactly which parameters train.

full: everything; freeze: the last N decoder layers (+ named modules); lora: PEFT adapters
(rsLoRA, DoRA, PiSSA init, QLoRA on a bitsandbytes base); galore: everything, with the optimizer
projecting gradients of 2-D weights (see rayft_core.train.optim).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rayft_core.config import FreezeTuning, GaloreTuning, LoraTuning, RunConfig
from rayft_core.errors import UserInputError


class TuningError(UserInputError):
    """The tuning method does not fit this model; the message names the key to change."""


def linear_module_names(model: nn.Module) -> list[str]:
    """Short names of every Linear layer (bitsandbytes' quantized ones included) except the output head."""
    head = model.get_output_embeddings()
    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module is not head:
            names.add(full_name.rsplit(".", 1)[-1])
    return sorted(names)


def resolve_targets(model: nn.Module, target: str | list[str], key: str) -> list[str]:
    available = linear_module_names(model)
    if target == "all":
        return available
    missing = [t for t in target if t not in available]
    if missing:
        raise TuningError(f"{key}: {missing} match no linear module of this model; available: {available}")
    return list(target)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder blocks: the ModuleList whose length is config.num_hidden_layers."""
    n = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise TuningError("tuning.method freeze: cannot find the decoder layers of this model; use lora or full")


def apply_tuning(model: nn.Module, run: RunConfig) -> nn.Module:
    tuning = run.tuning
    if isinstance(tuning, LoraTuning):
        return _apply_lora(model, tuning, run.model.gradient_checkpointing, new_tokens=bool(run.model.add_special_tokens))
    if isinstance(tuning, FreezeTuning):
        _apply_freeze(model, tuning)
    else:  # full and galore train every parameter
        model.requires_grad_(True)
    return model


def _apply_freeze(model: nn.Module, tuning: FreezeTuning) -> None:
    layers = decoder_layers(model)
    if tuning.trainable_layers > len(layers):
        raise TuningError(f"tuning.trainable_layers: the model has {len(layers)} layers, got {tuning.trainable_layers}")
    model.requires_grad_(False)
    for layer in layers[len(layers) - tuning.trainable_layers:]:
        layer.requires_grad_(True)
    for pattern in tuning.trainable_modules:
        hits = [p for name, p in model.named_parameters() if pattern in name]
        if not hits:
            raise TuningError(f"tuning.trainable_modules: {pattern!r} matches no parameter name")
        for p in hits:
            p.requires_grad_(True)


def _embedding_module_names(model: nn.Module) -> list[str]:
    wanted = {id(model.get_input_embeddings()), id(model.get_output_embeddings())}
    return [name.rsplit(".", 1)[-1] for name, m in model.named_modules() if id(m) in wanted]


def _apply_lora(model: nn.Module, tuning: LoraTuning, gradient_checkpointing: bool, new_tokens: bool) -> nn.Module:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    targets = resolve_targets(model, tuning.target, "tuning.target")
    if tuning.quantization_bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    init: Any = {"default": True, "gaussian": "gaussian", "pissa": "pissa_niter_16"}[tuning.init]
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=tuning.rank,
        lora_alpha=tuning.lora_alpha,
        lora_dropout=tuning.dropout,
        target_modules=targets,
        use_rslora=tuning.use_rslora,
        use_dora=tuning.use_dora,
        init_lora_weights=init,
        # Added special tokens have fresh embedding rows: train the embeddings and head in full
        # and save them with the adapter, or the adapter would point at rows no one trained.
        modules_to_save=_embedding_module_names(model) if new_tokens else None,
    )
    model = get_peft_model(model, config)
    # Adapters train in fp32 even when the frozen base runs in 16-bit: small updates to
    # low-rank matrices underflow in bf16.
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def galore_params(model: nn.Module, tuning: GaloreTuning) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(projected 2-D weights of the targeted linear layers, everything else)."""
    targets = set(resolve_targets(model, tuning.target, "tuning.target"))
    head = model.get_output_embeddings()
    projected, rest = [], []
    ids = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module is not head and name.rsplit(".", 1)[-1] in targets:
            projected.append(module.weight)
            ids.add(id(module.weight))
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return projected, rest


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a 4-bit weight counts its unpacked elements."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
