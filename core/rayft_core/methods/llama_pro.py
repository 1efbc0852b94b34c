"""LLaMA Pro's block expansion (Wu et al. 2024, "LLaMA Pro: Progressive LLaMA with Block Expansion",
arXiv:2401.02415), for freeze tuning: new decoder blocks are inserted, each a copy of the block before it with its
attention and MLP output projections (o_proj, down_proj) at zero, so that each adds nothing to the residual stream
and the expanded model computes exactly what the original did; only the new blocks then train, which adds
knowledge while the original blocks keep theirs. Imports torch: the methods call it inside ``apply``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from rayft_core.methods.layers import TuningError, decoder_layers

OUTPUT_PROJECTIONS = ("o_proj", "down_proj")  # what a block adds to the residual stream through, in Llama's names


def expand_blocks(model: nn.Module, new: int) -> list[nn.Module]:
    """Insert ``new`` zero-output copies into the model's decoder stack, one after each of ``new`` equal groups of
    its blocks; renumber the blocks' layer indices and the config (num_hidden_layers, layer_types). Returns the new
    blocks."""
    layers = decoder_layers(model)
    if len(layers) % new:
        raise TuningError(f"tuning.expand_layers: {new} must divide the model's {len(layers)} decoder layers")
    group = len(layers) // new
    blocks, origin, added = [], [], []
    for i, block in enumerate(layers):
        blocks.append(block)
        origin.append(i)
        if (i + 1) % group == 0:
            twin = copy.deepcopy(block)
            _zero_outputs(twin)
            blocks.append(twin)
            origin.append(i)
            added.append(twin)
    del layers[:]
    layers.extend(blocks)
    for index, block in enumerate(layers):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):  # the KV cache's slot of each attention
                module.layer_idx = index
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in origin]
    config.num_hidden_layers = len(layers)
    return added


def _zero_outputs(block: nn.Module) -> None:
    outputs = [m for name, m in block.named_modules() if name.rsplit(".", 1)[-1] in OUTPUT_PROJECTIONS]
    if len(outputs) != len(OUTPUT_PROJECTIONS) or not all(isinstance(m, nn.Linear) for m in outputs):
        raise TuningError(
            "tuning.expand_layers: LLaMA Pro zeroes a block's attention and MLP output projections "
            f"({' and '.join(OUTPUT_PROJECTIONS)}, as Llama, Mistral and Qwen name them); this model's blocks have "
            f"{sorted({n.rsplit('.', 1)[-1] for n, m in block.named_modules() if isinstance(m, nn.Linear)})}"
        )
    with torch.no_grad():
        for module in outputs:
            module.weight.zero_()
            if module.bias is not None:
                module.bias.zero_()


def spread_layers(layers: nn.ModuleList, n: int) -> list[nn.Module]:
    """The last block of each of ``n`` equal groups: where LLaMA Pro put its new blocks (LLaMA-Factory's
    use_llama_pro picks the trainable blocks of an expanded checkpoint so)."""
    if len(layers) % n:
        raise TuningError(f"tuning.trainable_layers: {n} must divide the model's {len(layers)} layers with spread")
    stride = len(layers) // n
    return [layers[i] for i in range(stride - 1, len(layers), stride)]
