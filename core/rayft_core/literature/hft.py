"""Half Fine-Tuning as a rayft plug-in method (docs/extending.md walks through this file).

Hui et al. 2024, "HFT: Half Fine-Tuning for Large Language Models" (arXiv:2404.18466): in each round of training,
half of the model's parameters are frozen and the other half update; freezing half keeps more of what the model
knew (less forgetting) at about the same gain on the new task. Here a round is ``switch_interval`` optimizer
steps, and in every decoder layer half of the attention projections and half of the MLP projections train, drawn
at random each round (the paper's selection within each block's categories); embeddings, norms and the head stay
frozen.

    tuning:
      method: rayft_core.literature.hft:HalfFineTuning
      switch_interval: 50
"""

import random

from pydantic import Field

from rayft_core.methods import TuningSection


class HalfFineTuning(TuningSection):
    optimizer = "hft"  # a name for messages: make_optimizer builds it

    method: str  # holds the reference itself ("path/to/hft.py:HalfFineTuning")
    switch_interval: int = Field(50, ge=1, description="Optimizer steps a half trains before the next draw.")

    def apply(self, model, run):
        from rayft_core.methods.layers import decoder_layers

        model.requires_grad_(False)
        for layer in decoder_layers(model):
            for p in halves(layer)[0] + halves(layer)[1]:
                p.requires_grad_(True)  # the optimizer leaves one half trainable at a time
        return model

    def make_optimizer(self, groups, run, model):
        from rayft_core.methods.layers import decoder_layers
        from rayft_core.train.block_adam import RoundAdamW
        from rayft_core.train.optim import whole_tensors

        whole_tensors(run, "HFT")  # it switches which weights train: DeepSpeed's 16-bit optimizer would not see it
        layers = decoder_layers(model)
        seed = run.train.seed

        def trainable(round_):  # the same on every worker: drawn from the round and the seed
            rng = random.Random(seed * 1_000_003 + round_)
            chosen = []
            for layer in layers:
                for category in halves(layer):
                    chosen += rng.sample(category, (len(category) + 1) // 2)
            return chosen

        lr = run.train.learning_rate
        return RoundAdamW(groups, trainable, self.switch_interval, lr=lr, betas=(0.9, 0.999), eps=1e-8)

    def problems(self, run):
        if run.deepspeed.zero_stage:
            return [
                "deepspeed.zero_stage: HFT switches which weights train, which ZeRO's fixed partitions cannot "
                f"follow; set it to 0, got {run.deepspeed.zero_stage}"
            ]
        return []


def halves(layer):
    """A decoder layer's 2-D weights in two categories: attention, and the rest (MLP or experts)."""
    attention, rest = [], []
    for name, p in layer.named_parameters():
        if p.ndim == 2:
            (attention if "attn" in name or "attention" in name else rest).append(p)
    return attention, rest
