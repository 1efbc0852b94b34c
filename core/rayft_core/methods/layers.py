"""The parts of a loaded model that tuning methods name: its linear layers (LoRA and GaLore targets) and its
decoder layers (freeze). Imports torch: the methods import it inside the functions that apply them.
"""

from __future__ import annotations

from torch import nn

from rayft_core.errors import UserInputError


class TuningError(UserInputError):
    """The tuning method does not fit this model; the message names the key to change."""


# Linear layers of Mamba mixers that the fused selective-scan kernel reads directly, bypassing an adapter (PEFT
# refuses LoRA on them for these model types).
KERNEL_READ_LINEARS = {t: {"out_proj"} for t in ("falcon_h1", "mamba", "mamba2", "falcon_mamba", "nemotron_h")}


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every linear layer a tuning method may target: the nn.Linear (bitsandbytes' quantized
    ones included) and GPT-2 Conv1D layers of the decoder blocks (attention, MLP, experts, mixers), never the output
    head, embeddings or projections outside the blocks, never an MoE router (rayft_core.model.moe.is_router)."""
    from transformers.pytorch_utils import Conv1D

    from rayft_core.model.moe import is_router

    head = model.get_output_embeddings()
    try:
        blocks = {id(m) for m in decoder_layers(model).modules()}
    except TuningError:  # no stack of decoder layers found: every linear layer but the head
        blocks = None
    skip = KERNEL_READ_LINEARS.get(getattr(model.config, "model_type", ""), set())
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D))
        and module is not head
        and (blocks is None or id(module) in blocks)
        and name.rsplit(".", 1)[-1] not in skip
        and not is_router(model, module)
    ]


def linear_module_names(model: nn.Module) -> list[str]:
    """Short names of the linear layers of ``linear_layers``."""
    return sorted({name.rsplit(".", 1)[-1] for name, _ in linear_layers(model)})


def resolve_targets(model: nn.Module, target: str | list[str], key: str) -> list[str]:
    available = linear_module_names(model)
    if target == "all":
        return available
    missing = [t for t in target if t not in available]
    if missing:
        raise TuningError(f"{key}: {missing} match no linear module of this model; available: {available}")
    return list(target)


def untargeted_namesakes(model: nn.Module, targets: list[str]) -> list[str]:
    """Full names of the modules that share a short name with a target but are not targetable linear layers (an
    MoE router named like a projection, a block named like a layer): PEFT matches targets by short name, so these
    are excluded by full name."""
    linear = {name for name, _ in linear_layers(model)}
    wanted = set(targets)
    return [
        name for name, _ in model.named_modules() if name and name.rsplit(".", 1)[-1] in wanted and name not in linear
    ]


def targeted_linear_weights(model: nn.Module, target: str | list[str], key: str) -> list[nn.Parameter]:
    """The weights of the linear layers (the head excepted) that ``target`` names."""
    targets = set(resolve_targets(model, target, key))
    return [module.weight for name, module in linear_layers(model) if name.rsplit(".", 1)[-1] in targets]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder blocks: of the ModuleLists as long as config.num_hidden_layers, the one holding the
    most parameters (an MoE layer's list of experts can be as long)."""
    n = getattr(model.config, "num_hidden_layers", None)
    stacks = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if stacks:
        return max(stacks, key=lambda m: sum(p.numel() for p in m.parameters()))
    raise TuningError("tuning.method freeze: cannot find the decoder layers of this model; use lora or full")
