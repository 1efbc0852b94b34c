"""Several fine-tunes of one base merged into one model (`rayft export RUN --merge-with RUN2 ...`), weight by weight.

Each run's task vector is what it changed, d_i = W_i - W_base per weight (a LoRA adapter's s * B @ A, a full run's
difference from the base, nothing where it did not train), and the merged weight is W_base + the methods' merge:

- ``linear``: sum_i w_i d_i (task arithmetic, Ilharco et al. 2023);
- ``ties``: TIES-Merging (Yadav et al. 2023, "Resolving Interference When Merging Models"): each d_i keeps its
  ``density`` share of largest-magnitude entries (trim), each entry's sign is elected as the sign of
  sum_i w_i d_i (elect), and the entries agreeing with it are averaged, weighted by w_i (disjoint merge);
- ``dare_linear`` / ``dare_ties``: DARE (Yu et al. 2024, "Language Models are Super Mario"): each d_i drops entries
  at random with probability 1 - density and rescales the rest by 1 / density, then merges linearly or as TIES.

The base is never loaded whole: each base tensor is read, every run's version of it computed, merged and written
(rayft_core.model.shards.ShardWriter). DARE's draws are seeded per tensor, so a merge is reproducible.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import torch

from rayft_core.model.merge import LoraUpdates
from rayft_core.model.shards import SavedTensors, ShardWriter, copy_model_files, weight_files

METHODS = ("linear", "ties", "dare_linear", "dare_ties")


class RunWeights:
    """One run's version of each base weight: a full run's own tensor, or the base's with a LoRA adapter's update."""

    def __init__(self, run_dir: Path):
        adapter = (run_dir / "adapter_config.json").is_file()
        self.lora = LoraUpdates(run_dir) if adapter else None
        self.saved = None if adapter else SavedTensors(run_dir, "--merge-with")

    def get(self, key: str, base: torch.Tensor) -> torch.Tensor:
        """This run's ``key``, in fp32 (``base``: the base's, in fp32)."""
        if self.saved is not None:
            return self.saved.get(key, base.shape).float()
        if key in self.lora.whole:
            return self.lora.whole[key].float()
        return self.lora.merged(key, base)


def merge_deltas(
    deltas: list[torch.Tensor], weights: list[float], method: str, density: float, generator: torch.Generator
) -> torch.Tensor:
    """The merged task vector of one weight (see the module's docstring)."""
    if method.startswith("dare"):
        keep = [torch.rand(d.shape, generator=generator) < density for d in deltas]
        deltas = [d * k / density for d, k in zip(deltas, keep)]
    if method.endswith("linear"):
        return sum(w * d for w, d in zip(weights, deltas))
    if method == "ties":  # DARE-TIES has dropped at random instead of trimming
        deltas = [_trim(d, density) for d in deltas]
    weighted = torch.stack([w * d for w, d in zip(weights, deltas)])
    sign = torch.sign(weighted.sum(0))
    agree = (torch.sign(weighted) == sign) & (weighted != 0)
    mass = (torch.tensor(weights).view(-1, *[1] * sign.ndim) * agree).sum(0)
    return (weighted * agree).sum(0) / mass.clamp(min=1e-12)


def _trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """The ``density`` share of ``delta``'s entries with the largest magnitude; the rest zero."""
    k = max(1, round(density * delta.numel()))
    if k >= delta.numel():
        return delta
    threshold = delta.abs().reshape(-1).kthvalue(delta.numel() - k + 1).values
    return torch.where(delta.abs() >= threshold, delta, torch.zeros_like(delta))


def merge_runs(
    base: Path,
    run_dirs: list[Path],
    dest: Path,
    method: str,
    weights: list[float],
    density: float,
    max_shard_size: str,
    dtype: torch.dtype,
    seed: int = 0,
) -> dict[str, Any]:
    """``base`` with the task vectors of ``run_dirs`` merged, written to ``dest``; returns what was merged."""
    from safetensors import safe_open

    runs = [RunWeights(d) for d in run_dirs]
    writer, merged = ShardWriter(dest, max_shard_size), 0
    for file in weight_files(base):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                weight = f.get_tensor(key)
                if weight.is_floating_point():
                    weight = weight.float()
                    deltas = [run.get(key, weight) - weight for run in runs]
                    if any(d.any() for d in deltas):
                        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
                        weight = weight + merge_deltas(deltas, weights, method, density, generator)
                        merged += 1
                    weight = weight.to(dtype)
                writer.add({key: weight})
    writer.close()
    copy_model_files(base, dest, dtype)
    return {"method": method, "runs": [str(d) for d in run_dirs], "weights": weights, "density": density,
            "merged_weights": merged}  # fmt: skip
