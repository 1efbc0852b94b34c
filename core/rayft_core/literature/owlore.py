"""OwLore as a rayft plug-in: outlier-weighted layer sampling with low-rank projected gradients.

Li et al. 2024, "OwLore: Outlier-weighted Layerwise Sampled Low-Rank Projection for Memory-Efficient LLM
Fine-tuning": like LISA, only a few decoder layers train at a time (``sampled_layers`` of them, drawn again every
``switch_interval`` steps) while the embeddings and head always train; unlike LISA, a layer is drawn with a
probability proportional to its outlier ratio (the share of its weights larger than ``outlier_threshold`` times
its matrix's mean magnitude: heavy-tailed layers matter more), and the sampled layers' 2-D weights train with
GaLore's rank-``rank`` projected gradients. Here the outlier ratio is read from the weights alone; the paper scores
each weight by |W| times its input's norm over calibration data, which a run has not seen when it starts.

    tuning: {method: rayft_core.literature.owlore:OwLore, sampled_layers: 2, rank: 16}
"""

import random

from pydantic import Field

from rayft_core.methods import TuningSection


class OwLore(TuningSection):
    optimizer = "owlore"  # a name for messages: make_optimizer builds it

    method: str
    sampled_layers: int = Field(2, ge=1, description="Decoder layers trained at a time.")
    switch_interval: int = Field(50, ge=1, description="Optimizer steps before the layers are drawn again.")
    outlier_threshold: float = Field(7.0, gt=1, description="A weight is an outlier above this x its mean magnitude.")
    rank: int = Field(16, ge=1, description="Rank of the sampled layers' projected gradients (GaLore).")
    update_proj_gap: int = Field(200, ge=1, description="Recompute the projection every N steps.")
    scale: float = Field(0.25, gt=0, description="GaLore's scale of the projected update.")

    def apply(self, model, run):
        model.requires_grad_(True)  # the optimizer keeps the drawn layers, embeddings and head trainable
        return model

    def param_groups(self, model, run):
        """The decoder layers' 2-D weights projected (GaLore's group options), everything else plain AdamW."""
        from rayft_core.methods.layers import decoder_layers

        lr, wd = run.train.learning_rate, run.train.weight_decay
        matrices = [p for layer in decoder_layers(model) for p in layer.parameters() if p.ndim == 2]
        ids = {id(p) for p in matrices}
        rest = [p for p in model.parameters() if id(p) not in ids]
        projection = {
            "rank": self.rank,
            "update_proj_gap": self.update_proj_gap,
            "scale": self.scale,
            "proj_type": "std",
        }
        return [
            {"params": rest, "lr": lr, "weight_decay": wd},
            {"params": matrices, "lr": lr, "weight_decay": wd, **projection},
        ]

    def make_optimizer(self, groups, run, model):
        from galore_torch import GaLoreAdamW

        from rayft_core.methods.layers import TuningError, decoder_layers
        from rayft_core.train.block_adam import Rounds
        from rayft_core.train.optim import whole_tensors

        whole_tensors(run, "OwLore")
        layers = list(decoder_layers(model))
        if self.sampled_layers > len(layers):
            raise TuningError(f"tuning.sampled_layers: the model has {len(layers)} layers, got {self.sampled_layers}")
        weights = [outlier_ratio(layer, self.outlier_threshold) for layer in layers]
        in_layers = {id(p) for layer in layers for p in layer.parameters()}
        always = [p for p in model.parameters() if id(p) not in in_layers]  # embeddings, final norm, head
        seed, count = run.train.seed, self.sampled_layers

        def trainable(round_):  # the same on every worker: drawn from the round and the seed
            drawn = weighted_sample(weights, count, random.Random(seed * 1_000_003 + round_))
            return always + [p for i in drawn for p in layers[i].parameters()]

        optimizer = type("RoundGaLoreAdamW", (Rounds, GaLoreAdamW), {})(groups, lr=run.train.learning_rate)
        optimizer.start_rounds(trainable, self.switch_interval)
        optimizer.outlier_ratios = weights
        return optimizer

    def problems(self, run):
        if run.deepspeed.zero_stage:
            return [
                f"deepspeed.zero_stage: OwLore switches layers and projects whole weights; set it to 0, got {run.deepspeed.zero_stage}"
            ]
        return []

    def missing_dependency(self):
        from rayft_core.methods.galore import GALORE_TORCH

        return GALORE_TORCH.missing("OwLore")


def outlier_ratio(layer, threshold: float) -> float:
    """The share of a layer's 2-D weights whose magnitude exceeds ``threshold`` x their matrix's mean magnitude."""
    import torch

    with torch.no_grad():
        matrices = [p.detach().abs() for p in layer.parameters() if p.ndim == 2]
        outliers = sum(int((m > threshold * m.mean()).sum()) for m in matrices)
        return outliers / max(1, sum(m.numel() for m in matrices))


def weighted_sample(weights: list[float], count: int, rng: random.Random) -> list[int]:
    """``count`` distinct indices, each draw with probability proportional to its weight among those left (a layer
    without outliers keeps a small chance: 1% of the mean weight)."""
    floor = 0.01 * (sum(weights) / len(weights) or 1.0)
    left = {i: max(w, floor) for i, w in enumerate(weights)}
    drawn = []
    for _ in range(count):
        pick, chosen = rng.uniform(0, sum(left.values())), max(left)
        for index, weight in left.items():
            pick -= weight
            if pick <= 0:
                chosen = index
                break
        drawn.append(chosen)
        del left[chosen]
    return sorted(drawn)
