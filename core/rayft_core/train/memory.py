"""What a run's workers will hold, estimated before anything starts (`rayft config validate` prints it).

Per worker, for the run's ZeRO stage over its data-parallel workers (N):

- parameters: every weight in its dtype (a 4-bit base: half a byte each), / N under ZeRO-3, plus what ZeRO-3
  gathers while it computes (about two decoder layers, or the output head when that is bigger) and its gradient
  and prefetch buckets;
- gradients: the trainable parameters' (in their dtype), / N from ZeRO-2;
- optimizer states: AdamW's two fp32 moments per trainable parameter, and DeepSpeed's fp32 master copy (every
  ZeRO stage from 1 keeps one, also of fp32 weights; ZeRO-0 where it trains 16-bit weights in mixed precision),
  / N from ZeRO-1; in host memory with offload_optimizer;
- activations: what backward needs of one micro-batch at max_seq_len (a preference pair's two answers: two
  rows): per token and layer about 10 hidden-size and 6 MLP-size values (attention's inputs and outputs, norms,
  the gated MLP's products; SmolLM2-135M's LoRA worker peaked 1.85 GB higher without checkpointing than with it
  at 4 x 256 tokens: 15k values per token and layer, as these count), plus the attention scores where attention
  is eager; with gradient checkpointing only each layer's input and one layer's recomputation; with sequence
  parallelism a worker's 1/N of the tokens. The loss's logits are computed in chunks (rayft_core.train.losses)
  and left out.

It is an estimate, measured against the workers' live peak memory on CPU in benchmarks/zero3_memory.py (a 0.35B
Llama; benchmarks/README.md): within 7% for ZeRO-0 and 2% for ZeRO-2; ZeRO-3's rank 0 holds 7% more (it also
reads the checkpoint and writes the model). The framework's memory (Python, torch, Ray; a CUDA context on GPUs)
is one line of a gigabyte.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from torch import nn

GB = 2**30
RUNTIME_BYTES = 1 * GB  # Python, torch, DeepSpeed and Ray in a worker process (a CUDA context on GPUs)


@dataclasses.dataclass
class MemoryEstimate:
    parts: list[tuple[str, float, str]]  # (what, bytes, where it lives: "device", "host" or "nvme")
    workers: int

    def total(self, where: str | None = None) -> float:
        return sum(b for _, b, w in self.parts if where in (None, w))

    def lines(self, device: str) -> list[str]:
        """The estimate as lines for a terminal; ``device`` names where "device" parts live (GPU or CPU memory)."""
        where = {"device": device, "host": "host memory", "nvme": "NVMe files"}
        rows = [f"  {what:<38} {b / GB:8.2f} GB  {where[w]}" for what, b, w in self.parts]
        return [
            f"memory per worker (estimate, {self.workers} worker(s)):",
            *rows,
            f"  {'total':<38} {self.total() / GB:8.2f} GB",
        ]


def estimate_memory(run: Any, model: nn.Module, config: Any, bytes_per_value: int) -> MemoryEstimate:
    """``model``: the run's model with its tuning method applied, on the meta device (shapes only); ``config``:
    its transformers config; ``bytes_per_value``: the bytes of the run's dtype (4 for fp32, 2 for bf16/fp16)."""
    ds, n = run.deepspeed, run.cluster.num_workers
    zero = ds.zero_stage or 0
    adapter = run.tuning.trains_adapter
    trained_bytes = 4 if adapter else bytes_per_value  # adapters train in fp32 on any base
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    weight_bytes = trainable * trained_bytes + _frozen_bytes(model, run, bytes_per_value)
    # DeepSpeed's fp32 copy of what trains: every ZeRO optimizer keeps one of its partition (also of fp32 weights),
    # and ZeRO-0 under bf16/fp16 of the whole.
    master = 4 if zero >= 1 or (bytes_per_value < 4 and not adapter) else 0
    parts = [
        ("parameters" + (" (1/N)" if zero == 3 else ""), weight_bytes / (n if zero == 3 else 1), _params_where(ds)),
        ("gradients" + (" (1/N)" if zero >= 2 else ""), trainable * trained_bytes / (n if zero >= 2 else 1), "device"),
        (
            "optimizer states" + (" (1/N)" if zero >= 1 else ""),
            trainable * (8 + master) / (n if zero >= 1 else 1),
            _offloaded_to(ds) if ds.offload_optimizer else "device",
        ),
    ]
    if zero == 3:
        parts.append(("gathered while computing (ZeRO-3)", _gathered_bytes(model, bytes_per_value), "device"))
        parts.append(("gradient and prefetch buckets (ZeRO-3)", _bucket_bytes(ds, bytes_per_value), "device"))
    parts.append(("activations", _activation_bytes(run, config, bytes_per_value), "device"))
    parts.append(("framework (Python, torch, DeepSpeed)", RUNTIME_BYTES, "host"))
    return MemoryEstimate(parts, n)


def _frozen_bytes(model: nn.Module, run: Any, bytes_per_value: int) -> float:
    """The frozen weights' bytes: the run's dtype, or bits/8 for the linear layers of a quantized (QLoRA) base."""
    bits = getattr(run.tuning, "quantization_bit", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    quantized = {id(m.weight) for m in model.modules() if bits and isinstance(m, nn.Linear) and m is not head}
    return sum(
        p.numel() * (bits / 8 if id(p) in quantized else bytes_per_value)
        for p in model.parameters()
        if not p.requires_grad
    )


def _params_where(ds: Any) -> str:
    return _offloaded_to(ds) if ds.offload_params else "device"


def _offloaded_to(ds: Any) -> str:
    return "nvme" if ds.offload_nvme_path else "host"


DEEPSPEED_BUCKET = 5 * 10**7  # rayft's reduce_bucket_size, and DeepSpeed's default stage3_prefetch_bucket_size


def _gathered_bytes(model: nn.Module, bytes_per_value: int) -> float:
    """What ZeRO-3 holds whole while it computes: about two decoder layers (the current one and the prefetched
    next), or the output head when that is bigger."""
    from rayft_core.methods.layers import decoder_layers

    layers = decoder_layers(model)
    total = sum(p.numel() for p in model.parameters())
    per_layer = sum(p.numel() for p in layers[0].parameters()) if layers else total
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return max(2 * per_layer, head.weight.numel() if head is not None else 0) * bytes_per_value


def _bucket_bytes(ds: Any, bytes_per_value: int) -> float:
    """ZeRO-3's gradient bucket and parameter prefetch bucket."""
    return (DEEPSPEED_BUCKET + (ds.prefetch_bucket_size or DEEPSPEED_BUCKET)) * bytes_per_value


def _rows_per_example(run: Any) -> int:
    """Rows one example puts through the model with gradients: a preference pair's chosen and rejected answers
    run as one batch of twice the rows (KTO's mismatched rows run without gradients)."""
    from rayft_core.train.preference import PairStage
    from rayft_core.train.stages import STAGES

    return 2 if isinstance(STAGES.get(run.stage.name), PairStage) else 1


def _activation_bytes(run: Any, config: Any, bytes_per_value: int) -> float:
    text = getattr(config, "text_config", None) or config
    hidden = getattr(text, "hidden_size", 0) or 0
    mlp = getattr(text, "intermediate_size", None) or 4 * hidden
    layers = getattr(text, "num_hidden_layers", 0) or 0
    heads = getattr(text, "num_attention_heads", 0) or 0
    rows = run.train.micro_batch_size * _rows_per_example(run)
    tokens = rows * run.data.max_seq_len / run.cluster.sequence_parallel_size  # a worker's slice
    per_layer = tokens * (10 * hidden + 6 * mlp) * bytes_per_value
    if run.model.attn_implementation == "eager":
        per_layer += 2 * tokens * heads * run.data.max_seq_len * bytes_per_value
    if run.model.checkpoints_activations:  # each layer's input kept, one layer recomputed at a time
        return layers * tokens * hidden * bytes_per_value + per_layer
    return layers * per_layer


def value_bytes(run: Any, gpu: bool) -> int:
    """The bytes of one value in the run's dtype (auto: fp32 on CPU, 16-bit on GPUs)."""
    return 4 if run.model.dtype == "float32" or (run.model.dtype == "auto" and not gpu) else 2


def this_machine_cores() -> int:
    """The cores this process may run on (its affinity, which a container or taskset narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def this_machine_per_worker(workers: int, gpu: bool, share: float = 1.0) -> float | None:
    """The memory one of ``workers`` workers on this machine may use: its GPU's (one each; None without one), or
    an equal part of the host memory available now, or of ``share`` of all of it when that is less (a sweep's
    trials side by side)."""
    import psutil
    import torch

    if gpu:
        return float(torch.cuda.get_device_properties(0).total_memory) if torch.cuda.is_available() else None
    memory = psutil.virtual_memory()
    return min(memory.available, share * memory.total) / workers


CHECKPOINTING_HEADROOM = 0.8  # of a worker's memory: the estimate is within ~7%, and the allocator needs slack


def decide_checkpointing(run: Any, model: nn.Module, config: Any, gpu: bool, budget: float | None) -> tuple[bool, str]:
    """model.gradient_checkpointing auto, decided: (on, why). On where a worker, every activation kept, would need
    more than CHECKPOINTING_HEADROOM of ``budget`` (the memory one worker may use: its GPU's, or on CPU its share
    of its node's; None: not known here), off otherwise: checkpointing recomputes each layer's forward pass in
    backward, a quarter to a third of a step's compute, to save memory the worker does not need."""
    if budget is None:
        return True, "a worker's GPU memory is not known before it starts"
    plain = run.model_copy(deep=True)
    plain.model.gradient_checkpointing = False
    estimate = estimate_memory(plain, model, config, value_bytes(run, gpu))
    need = estimate.total("device") if gpu else estimate.total()
    fits = need <= CHECKPOINTING_HEADROOM * budget
    share = f"{CHECKPOINTING_HEADROOM:.0%} of {budget / GB:.1f} GB"
    return not fits, f"a worker needs about {need / GB:.1f} GB without it, {'within' if fits else 'over'} {share}"
