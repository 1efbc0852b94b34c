"""A model written from one of a run's checkpoints (``rayft export RUN_DIR/checkpoint_...``), on one machine, as
Hugging Face shards, without the model or the optimizer's state ever whole in memory.

A checkpoint holds every rank's DeepSpeed state (rayft_core.train.checkpoint). Its weights are read with
DeepSpeed's ZeRO reader in lazy mode: the ranks' files are memory-mapped, the optimizer's moments are dropped
unread, and each weight is assembled from the ranks' partitions of the fp32 master copy only when it is written.
They are written module by module of the model built on the meta device (no memory), in the names a saved model
uses (transformers' load-time conversions reverted), as ``save_partitioned`` writes the end of a run. Weights the
run did not train (freeze tuning) come from the base model's files; a reward model's head goes beside them.

An adapter run's checkpoint holds only what trained, in the names of PEFT's wrapped model: ``write_checkpoint_adapter``
saves it as PEFT saves an adapter, through the run's model wrapped by its tuning method on the meta device, and the
export merges it as it merges a finished run's.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import torch

from rayft_core.errors import UserInputError
from rayft_core.model.shards import SavedTensors, ShardWriter, module_groups, write_model_config
from rayft_core.model.value_head import save_value_head
from rayft_core.train.checkpoint import CHECKPOINT_TAG

HEAD_PREFIX, LM_PREFIX = "v_head.", "lm."  # a reward model's names: rayft_core.model.value_head.ValueHeadModel


def _lm_and_head(weights: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The causal LM's weights and a reward model's head (empty for a plain LM), each by its own names."""
    head = {n.removeprefix(HEAD_PREFIX): w for n, w in weights.items() if n.startswith(HEAD_PREFIX)}
    lm = {n.removeprefix(LM_PREFIX) if head else n: w for n, w in weights.items() if not n.startswith(HEAD_PREFIX)}
    return lm, head


def checkpoint_weights(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's trained weights by the engine module's names: under ZeRO, DeepSpeed's lazy stand-ins (each
    ``.contiguous()`` assembles one fp32 tensor from the memory-mapped ranks' files); under ZeRO-0, the module's
    own memory-mapped tensors."""
    state = checkpoint / CHECKPOINT_TAG
    if any(state.glob("*zero_pp_rank_*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress
            return get_fp32_state_dict_from_zero_checkpoint(
                str(checkpoint), tag=CHECKPOINT_TAG, exclude_frozen_parameters=True, lazy_mode=True
            )
    files = sorted(state.glob("mp_rank_*_model_states.pt"))
    if not files:
        raise UserInputError(f"checkpoint {checkpoint} holds no DeepSpeed model state in {CHECKPOINT_TAG}/")
    return torch.load(files[0], map_location="cpu", mmap=True, weights_only=False)["module"]


def write_checkpoint_model(
    run: Any,
    checkpoint: Path,
    dest: Path,
    max_shard_size: int | str,
    dtype: torch.dtype | None,
    trust_remote_code: bool,
) -> None:
    """The model of ``run`` as trained up to ``checkpoint``, in ``dest`` (cast to ``dtype`` when given, else in the
    dtype the checkpoint keeps: fp32 masters under ZeRO)."""
    lm, head = _lm_and_head(checkpoint_weights(checkpoint))
    stored = next(iter(lm.values())).dtype
    model = _meta_model(run, lm, dtype or stored, trust_remote_code)
    # the weights the run kept frozen, which its checkpoints leave out
    base = SavedTensors(run.model.name_or_path, "completing the checkpoint with the base's frozen weights")
    from transformers.core_model_loading import revert_weight_conversion

    writer = ShardWriter(dest, max_shard_size)
    for params, buffers in module_groups(model):
        tensors = {}
        for name, meta in [*params, *buffers]:
            tensor = lm[name].contiguous() if name in lm else base.get(name, meta.shape)
            tensors[name] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        writer.add(revert_weight_conversion(model, tensors))
    writer.close()
    write_model_config(model, dest)
    if head:
        save_value_head(dest, {n: w.contiguous() for n, w in head.items()})


def write_checkpoint_adapter(run: Any, checkpoint: Path, dest: Path) -> None:
    """The adapter of an adapter run as trained up to ``checkpoint``, in ``dest`` as PEFT saves it (adapter_config.json
    and the adapter's weights), a reward model's head beside it."""
    from rayft_core.model.loader import ModelFacts

    lm, head = _lm_and_head(checkpoint_weights(checkpoint))
    trained = {n: w.contiguous() for n, w in lm.items()}
    try:
        model = ModelFacts(run).tuned_meta_model  # PEFT's wrapping of the run's model, weightless
    except Exception as e:  # an initialisation that needs real weights (PiSSA's SVD, a quantized base)
        raise UserInputError(
            f"checkpoint {checkpoint}: cannot rebuild tuning method {run.tuning.method}'s adapter without the "
            f"base's weights ({e}); export the finished run instead"
        ) from e
    model.save_pretrained(dest, state_dict=trained, safe_serialization=True)
    if head:
        save_value_head(dest, {n: w.contiguous() for n, w in head.items()})


def _meta_model(run: Any, weights: dict[str, Any], dtype: torch.dtype, trust_remote_code: bool) -> Any:
    """The run's causal LM on the meta device (no memory), its embeddings as many rows as the checkpoint's."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    name = run.model.name_or_path
    config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    embeddings = next(n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight)
    if embeddings not in weights:
        raise UserInputError(
            f"this checkpoint holds no {embeddings}: it is not a full-parameter run's checkpoint of {name}, or the "
            "run's tuning adds modules rayft cannot export from a checkpoint yet (export the finished run instead)"
        )
    rows = weights[embeddings].shape[0]
    if rows != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(rows, mean_resizing=False)  # the run added tokens
    with contextlib.suppress(OSError):  # a base without generation_config.json keeps the one from its config
        model.generation_config = GenerationConfig.from_pretrained(name)
    return model
