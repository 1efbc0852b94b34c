"""Sequence parallelism for long context: DeepSpeed's Ulysses (Arctic Long Sequence Training, Rasley et al. 2025,
arXiv:2506.13996), with `cluster.sequence_parallel_size: N`.

The workers form groups of N. A group trains on one sequence at a time, each of its workers holding a contiguous
1/N of its tokens through the whole model; in attention an all-to-all swaps the split from tokens to heads (each
worker then sees every token for 1/N of the heads) and back. Activation memory per worker falls about N times.

How rayft feeds it, so that every row still trains exactly once and the loss means what it means without SP:

- each worker still reads its own rows (Ray Data's split is unchanged); at each micro-batch the group's workers
  exchange their rows and train on each member's micro-batch in turn (``SequenceSplit.batches``), so one
  optimizer step covers the same rows as it would without SP, and DeepSpeed's gradient accumulation counts N
  micro-steps for each of a worker's micro-batches;
- a micro-batch is padded to a multiple of N tokens, its labels shifted once for the whole sequence (token t
  predicts t+1, also across the split), its position ids taken from the whole sequence, and each worker keeps its
  slice; the loss is summed over the worker's labelled tokens and the units are counted once per token, so the
  loop's scaling (world size / units, rayft_core.train.loop) gives the same gradient as one worker on those rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from rayft_core.data import IGNORE_INDEX

if TYPE_CHECKING:  # torch is imported where it is used: the run schema imports this module's rules
    import torch


def problems(run: Any) -> list[str]:
    """The run's rules for sequence parallelism, each as 'path: what to change'."""
    size = run.cluster.sequence_parallel_size
    if size == 1:
        return []
    out = []
    if run.cluster.num_workers % size:
        out.append(
            f"cluster.sequence_parallel_size: {size} does not divide cluster.num_workers ({run.cluster.num_workers})"
        )
    if run.stage.name not in ("pt", "sft"):
        out.append(f"cluster.sequence_parallel_size: stage {run.stage.name} does not support it yet (pt and sft do)")
    if run.data.packing:
        out.append(
            "data.packing: packed rows restart their positions inside a sequence, which attention split across "
            "workers cannot honour without flash-attention's variable-length kernels; set it to false with "
            "cluster.sequence_parallel_size"
        )
    if run.model.attn_implementation == "eager":
        out.append("model.attn_implementation: eager attention cannot be split across workers; use auto or sdpa")
    return out


def model_problems(size: int, config: Any) -> list[str]:
    """What the model's attention needs: heads (and key/value heads) that split evenly across the group."""
    if size == 1:
        return []
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None)
    kv = getattr(text, "num_key_value_heads", None) or heads
    if not heads or heads % size or (kv % size and size % kv):
        return [
            f"cluster.sequence_parallel_size: {size} must divide the model's {heads} attention heads, and its "
            f"{kv} key/value heads must divide by it or it by them"
        ]
    return []


_replaced: dict[str, Callable] = {}  # attention implementation -> transformers' own function, while Ulysses wraps it


def register(run: Any, model: Any) -> Any:
    """Route the model's attention through Ulysses and make DeepSpeed's sequence-parallel groups; returns the
    groups object deepspeed.initialize takes as ``mpu``. Every worker of the run calls it (it makes process
    groups); a second session in the same process (a resumed run) replaces the first one's."""
    import deepspeed
    from deepspeed.runtime.sequence_parallel import parallel_state_sp
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    for name, original in _replaced.items():  # transformers' functions back, so the wrapper is not wrapped
        ALL_ATTENTION_FUNCTIONS[name] = original
    _replaced.clear()
    parallel_state_sp._release_sequence_parallel_groups()
    deepspeed.init_distributed(dist_init_required=False)  # the groups are made through DeepSpeed's comm
    name = model.config._attn_implementation
    _replaced[name] = ALL_ATTENTION_FUNCTIONS[name]
    return UlyssesSPAttentionHF.register_with_transformers(
        model_name_or_path=model,
        core_attn_implementation=name,
        sequence_parallel_size=run.cluster.sequence_parallel_size,
        micro_batch_size=run.train.micro_batch_size,
        seq_length_is_variable=True,
    )


class SequenceSplit:
    """A worker's share of its group's micro-batches (see the module's docstring)."""

    def __init__(self, mpu: Any, micro_batch_size: int):
        self.group = mpu.get_sequence_parallel_group()
        self.size, self.rank = mpu.get_sequence_parallel_world_size(), mpu.get_sequence_parallel_rank()
        self.micro_batch_size = micro_batch_size

    def batches(
        self, examples: dict[str, Any], collate: Callable[[dict[str, Any]], dict[str, torch.Tensor]]
    ) -> Iterator[dict[str, torch.Tensor]]:
        """This worker's slice of each group member's micro-batch, in member order (every member the same order)."""
        import torch

        members: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(members, examples, group=self.group)
        for member in members:
            yield self.slice(collate(member))

    def slice(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        import torch

        ids, labels = batch["input_ids"], batch["labels"]
        rows, length = ids.shape
        extra_rows, extra_tokens = self.micro_batch_size - rows, -length % self.size
        ids = torch.nn.functional.pad(ids, (0, extra_tokens, 0, extra_rows), value=0)
        labels = torch.nn.functional.pad(labels, (0, extra_tokens, 0, extra_rows), value=IGNORE_INDEX)
        shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # token t predicts t+1
        positions = batch.get("position_ids")
        if positions is None:
            positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        else:
            positions = torch.nn.functional.pad(positions, (0, extra_tokens, 0, extra_rows))
        chunk = ids.shape[1] // self.size
        part = slice(self.rank * chunk, (self.rank + 1) * chunk)
        return {
            "input_ids": ids[:, part].contiguous(),
            "shift_labels": shifted[:, part].contiguous(),
            "position_ids": positions[:, part].contiguous(),
        }
