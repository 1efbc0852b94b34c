"""GPU kernels chosen at run time: Liger's Triton kernels (model.liger_kernel; LLaMA-Factory's enable_liger_kernel)
for the norms, the gated MLP and rotary embeddings of the families Liger covers. rayft computes its own chunked,
fused loss from the hidden states (rayft_core.train.losses), so Liger's loss kernels stay off. Triton kernels need
a GPU: on CPU the option is said to have no effect and the model runs as it is."""

from __future__ import annotations

import importlib.util
import logging

import torch

from rayft_core.errors import UserInputError

logger = logging.getLogger(__name__)

LIGER_KERNELS = {
    "rope": True,
    "rms_norm": True,
    "swiglu": True,
    "cross_entropy": False,
    "fused_linear_cross_entropy": False,
}


def apply_liger(model: torch.nn.Module) -> bool:
    """Liger's kernels on ``model`` where a GPU runs it; returns whether they were applied."""
    if not torch.cuda.is_available():
        logger.warning("model.liger_kernel: Liger's kernels are Triton GPU kernels; on CPU they are not applied")
        return False
    if importlib.util.find_spec("liger_kernel") is None:
        raise UserInputError("model.liger_kernel needs liger-kernel on the workers: pip install 'rayft[liger]'")
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel_to_instance

    model_type = model.config.model_type
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        logger.warning("model.liger_kernel: Liger has no kernels for model type %s; it runs as it is", model_type)
        return False
    _apply_liger_kernel_to_instance(model=model, **LIGER_KERNELS)
    logger.info("model.liger_kernel: Liger's RMSNorm, SwiGLU and RoPE kernels applied to %s", model_type)
    return True
