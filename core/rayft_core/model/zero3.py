"""What ZeRO-3 needs of a model: to be built partitioned (``sharded_construction``), its partitioned parameters
read (``shape``, ``numel``, ``gathered``), and the modules it must gather whole (DeepSpeed "leaf modules").

ZeRO-3 gathers a module's parameters in a hook before that module's forward, which is wrong for two kinds of
block in transformers' families:

- an MoE block: its experts run only for the tokens routed to them, so ranks would gather different experts and
  the collectives would hang or mismatch; gathered as one block, every rank gathers every expert each step;
- a sequence mixer (Mamba, gated DeltaNet, short convolutions) that reads its Conv1d's weight directly instead of
  calling the Conv1d, so the Conv1d's own hook never runs and the weight would stay a partition.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from rayft_core.model.moe import moe_blocks

logger = logging.getLogger(__name__)


def leaf_classes(model: nn.Module) -> list[type]:
    mixers = {type(m) for m in model.modules() if any(isinstance(c, nn.Conv1d) for c in m.children())}
    return list(dict.fromkeys([*moe_blocks(model), *mixers]))


def mark_zero3_leaves(model: nn.Module) -> list[str]:
    """Make those blocks ZeRO-3 leaves, before deepspeed.initialize; returns their class names."""
    classes = leaf_classes(model)
    if classes:
        from deepspeed.utils import set_z3_leaf_modules

        set_z3_leaf_modules(model, classes)
    return [c.__name__ for c in classes]


@contextlib.contextmanager
def sharded_construction(ds_config: dict[str, Any] | None) -> Iterator[None]:
    """Under ZeRO-3 (``ds_config``'s stage 3), every model transformers builds inside is partitioned as it is
    built: ``from_pretrained`` runs under ``deepspeed.zero.Init`` and loads each checkpoint tensor straight into
    its partitions, so no worker ever holds a whole copy of the weights (with 8 workers on a node, a 70B model
    is not loaded 8 times). Elsewhere it does nothing: ZeRO-0/1/2 keep whole weights on every worker.

    The setting is transformers' process-wide ``HfDeepSpeedConfig``; it is cleared on exit, so a model loaded
    later in the same process (an export on rank 0, an evaluation engine) is a plain one."""
    if not ds_config or ds_config.get("zero_optimization", {}).get("stage") != 3:
        yield
        return
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    deepspeed.init_distributed(dist_init_required=False)  # zero.Init reads the world size from DeepSpeed's comm
    # transformers keeps only a weak reference: hold it while building. Without train_batch_size DeepSpeed
    # derives it, also with sequence-parallel groups, which zero.Init cannot see.
    setting = HfDeepSpeedConfig({k: v for k, v in ds_config.items() if k != "train_batch_size"})
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del setting


def build_partitioned(build: Callable[[], nn.Module], ds_config: dict[str, Any] | None) -> nn.Module:
    """``build()`` under ``sharded_construction``, and what it made whole partitioned too. A family whose weight initialisation transformers cannot run on
    partitioned parameters (RWKV and Youtu in transformers 5.19 fail inside from_pretrained) is built whole
    instead, as before ZeRO-3 built models partitioned, and partitioned by the engine: it trains, with a warning
    that every worker held it whole for a moment. Every rank fails alike, so all of them take the same path."""
    try:
        with sharded_construction(ds_config):
            model = build()
        partition_whole_parameters(model)  # what the tuning method added whole (adapters, PEFT's module copies)
        return model
    except Exception as e:  # noqa: BLE001 -- any failure of transformers' partitioned build; a real error recurs below
        if not ds_config or ds_config.get("zero_optimization", {}).get("stage") != 3:
            raise
        logger.warning(
            "the model could not be built partitioned (%s: %s); building it whole on each worker, then partitioned",
            type(e).__name__,
            e,
        )
        return build()


def weights_for_peer(name_or_path: str, remote_code: bool) -> dict[str, torch.Tensor] | None:
    """On a rank other than 0, while a model is built partitioned (``sharded_construction``): the checkpoint's
    tensors as shapes without data (meta tensors read from the safetensors headers), which is all
    transformers' ZeRO-3 loading needs there, since rank 0 alone copies the weights in. None elsewhere, and for a
    model that is not a local safetensors checkpoint or ships its own code (loaded as usual)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    from rayft_core.model.shards import tensor_headers, weight_files

    peer = torch.distributed.is_initialized() and torch.distributed.get_rank() != 0
    files = weight_files(name_or_path) if peer and is_deepspeed_zero3_enabled() and not remote_code else []
    if not files:
        return None
    return {
        key: torch.empty(shape, dtype=SAFETENSORS_DTYPES[dtype], device="meta")
        for key, (shape, dtype) in tensor_headers(files).items()
    }


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


def partition_whole_parameters(model: nn.Module) -> None:
    """Partition the parameters a partitioned model got whole after it was built: transformers makes resized
    embeddings whole on every rank, on purpose (other code reads their shape). Every rank holds the same values
    and keeps its partition of them; without this they would stay whole until deepspeed.initialize."""
    params = list(model.parameters())
    partitioned = next((p for p in params if hasattr(p, "ds_id")), None)
    whole = [p for p in params if not hasattr(p, "ds_id")]
    if partitioned is not None and whole:
        partitioned.convert_to_zero_parameters(param_list=whole)


def gathered(params: list[nn.Parameter], modifier_rank: int | None = None) -> contextlib.AbstractContextManager:
    """The parameters whole inside the block where ZeRO-3 partitions them (changes made on ``modifier_rank`` are
    kept on exit); a no-op for whole parameters."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=modifier_rank)


def shape(p: nn.Parameter) -> torch.Size:
    """A parameter's full shape, also when ZeRO-3 holds only a partition of it (``ds_shape``)."""
    return getattr(p, "ds_shape", None) or p.shape


def numel(p: nn.Parameter) -> int:
    """A parameter's full size, also when ZeRO-3 holds only a partition of it (``ds_numel``)."""
    return getattr(p, "ds_numel", None) or p.numel()


def is_partitioned(p: nn.Parameter) -> bool:
    """Whether this worker holds only its partition of ``p`` (ZeRO-3 released the rest)."""
    return hasattr(p, "ds_numel") and p.data.numel() < p.ds_numel
