"""The parts of a loaded model that tuning methods name: its linear layers (LoRA and GaLore targets) and its
decoder layers (freeze). Imports torch: the methods import it inside the functions that apply them.
"""

from __future__ import annotations

from torch import nn

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


def targeted_linear_weights(model: nn.Module, target: str | list[str], key: str) -> list[nn.Parameter]:
    """The weights of the linear layers (the head excepted) that ``target`` names."""
    targets = set(resolve_targets(model, target, key))
    head = model.get_output_embeddings()
    return [
        module.weight
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head and name.rsplit(".", 1)[-1] in targets
    ]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder blocks: the ModuleList whose length is config.num_hidden_layers."""
    n = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise TuningError("tuning.method freeze: cannot find the decoder layers of this model; use lora or full")
