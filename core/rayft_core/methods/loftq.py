"""LoftQ initialisation of a QLoRA adapter (tuning: {method: lora, quantization_bit: 4, init: loftq}).

Li et al. 2024, "LoftQ: LoRA-Fine-Tuning-Aware Quantization for Large Language Models" (ICLR 2024): instead of
starting the adapter at zero on a quantized base, which starts training from the quantized model and its error,
set the adapter to the best rank-r approximation of what quantization lost, W - Q(W), so that base + adapter
starts closer to the full-precision weights. This is LoftQ with one alternating step (PEFT's default loftq_iter=1):
Q(W) is the base bitsandbytes quantized as it loaded, W is read from the model's safetensors files, and the
residual's truncated SVD goes into A and B (divided by LoRA's scaling). PEFT's own LoftQ needs CUDA; this runs
wherever the quantized base does.
"""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def loftq_initialise(model: nn.Module, base_dir: str, adapter: str = "default") -> int:
    """Set every LoRA layer's A and B on a quantized base layer to the rank-r SVD of (W - Q(W)); returns how many
    layers it set. ``model`` is the PEFT model; W comes from ``base_dir``'s safetensors weights."""
    from peft.tuners.lora import LoraLayer

    from rayft_core.model.shards import SavedTensors

    weights = SavedTensors(base_dir, "tuning.init loftq")
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
            continue
        base = module.get_base_layer()
        key = name.removeprefix("base_model.model.") + ".weight"
        quantized = dequantized_weight(base)
        full = weights.get(key, quantized.shape).to(quantized.device, torch.float32)
        u, s, vh = torch.linalg.svd(full - quantized, full_matrices=False)
        r, scale = module.r[adapter], module.scaling[adapter]
        root = s[:r].sqrt()
        a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        a.copy_((root[:, None] * vh[:r]) / math.sqrt(scale))  # scale * B @ A = U_r S_r V_r^T
        b.copy_((u[:, :r] * root) / math.sqrt(scale))
        count += 1
    return count


@torch.no_grad()
def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The weight a (quantized) linear layer computes with, [out, in] in fp32: its output for the identity, less its
    bias. Exact for any bitsandbytes layout, as it asks the layer itself."""
    device = next(layer.parameters()).device
    eye = torch.eye(layer.in_features, device=device, dtype=_compute_dtype(layer))
    out = layer(eye).float()
    if getattr(layer, "bias", None) is not None:
        out = out - layer.bias.float()
    return out.T.contiguous()


def _compute_dtype(layer: nn.Module) -> torch.dtype:
    dtype = getattr(layer, "compute_dtype", None)  # bitsandbytes' 4-bit layers
    return dtype if isinstance(dtype, torch.dtype) else torch.float32
