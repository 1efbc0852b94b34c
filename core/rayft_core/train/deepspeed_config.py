"""The DeepSpeed config of a run: generated from it, or a user's JSON with its "auto" values filled."""

from __future__ import annotations

import json
from typing import Any

import torch

from rayft_core.config import RunConfig


def build_deepspeed_config(run: RunConfig, dtype: torch.dtype, world_size: int) -> dict[str, Any]:
    ds = run.deepspeed
    t = run.train
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        zero.update(contiguous_gradients=True, overlap_comm=False, reduce_bucket_size=5e7)
    if ds.zero_stage == 3:
        zero.update(stage3_param_persistence_threshold=1e4)  # norms and biases stay whole: gathering costs more
    offload = {"device": "nvme", "nvme_path": ds.offload_nvme_path} if ds.offload_nvme_path else {"device": "cpu"}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {**offload, "pin_memory": True}
    if ds.offload_params:
        zero["offload_param"] = {**offload, "pin_memory": True}
    if ds.max_live_parameters is not None:
        zero["stage3_max_live_parameters"] = zero["stage3_max_reuse_distance"] = ds.max_live_parameters
    if ds.prefetch_bucket_size is not None:
        zero["stage3_prefetch_bucket_size"] = ds.prefetch_bucket_size
    generated: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        # With sequence parallelism each of a worker's micro-batches is N micro-steps, one per member of its group.
        "gradient_accumulation_steps": t.gradient_accumulation_steps * run.cluster.sequence_parallel_size,
        "train_batch_size": t.micro_batch_size * t.gradient_accumulation_steps * world_size,
        "gradient_clipping": 0.0 if run.tuning.forward_only else t.max_grad_norm,  # MeZO: no gradient to clip
        "zero_optimization": zero,
        # Mixed precision in DeepSpeed casts the module; adapters stay fp32 on a 16-bit base instead.
        "bf16": {"enabled": dtype == torch.bfloat16 and not run.tuning.trains_adapter},
        "fp16": {"enabled": dtype == torch.float16 and not run.tuning.trains_adapter},
        "steps_per_print": 10**9,
        # ZeRO checks a client optimizer against the ones DeepSpeed tested; bitsandbytes' and rayft's own step
        # whatever tensors ZeRO hands them (rayft_core.train.optim.problems refuses the pairs that cannot work)
        "zero_allow_untested_optimizer": True,
        "wall_clock_breakdown": False,
    }
    if ds.offload_optimizer:  # offloaded states need DeepSpeed's own CPU Adam, not a client optimizer
        generated["optimizer"] = {"type": "AdamW", "params": {"lr": t.learning_rate, "weight_decay": t.weight_decay}}
    if ds.config_file is None:
        return generated
    with open(ds.config_file) as f:
        user = json.load(f)
    return _fill_auto(user, generated)


def _fill_auto(user: Any, generated: Any) -> Any:
    """Replace every "auto" in the user's JSON with the value the run implies."""
    if isinstance(user, dict):
        return {
            k: (
                generated.get(k)
                if v == "auto"
                else _fill_auto(v, generated.get(k) if isinstance(generated, dict) else None)
            )
            for k, v in user.items()
        }
    return user
