"""MeZO as a rayft plug-in: fine-tuning with forward passes only.

Malladi et al. 2023, "Fine-Tuning Language Models with Just Forward Passes" (NeurIPS 2023): zeroth-order SGD by
SPSA. Each step draws a direction z ~ N(0, I) over every trained weight, evaluates the loss at theta + eps z and
theta - eps z, and moves theta by -lr * g * z with g = (L+ - L-) / (2 eps), the gradient's projection on z. No
backward pass runs, so neither gradients nor activations are kept: training needs the memory of inference. The
seed trick: z is never stored, but drawn again from the step's seed for each perturbation and for the update.
Every worker draws the same z (the seed is the step's) and uses the loss difference averaged over all workers.

    tuning: {method: rayft_core.literature.mezo:MeZO, eps: 1.0e-3}
    train: {learning_rate: 1.0e-6}   # the paper's range: 1e-7 to 1e-6 for full models

It needs gradient_accumulation_steps 1 (one projected gradient per step), ZeRO-0 and fp32 weights.
"""

from typing import Any

import torch
from pydantic import Field

from rayft_core.methods import TuningSection
from rayft_core.train.block_adam import CountsSteps


class MeZO(TuningSection):
    optimizer = "mezo"  # a name for messages: make_optimizer builds it
    forward_only = True  # the loop calls ZerothOrderSGD.forward_only instead of a backward pass

    method: str
    eps: float = Field(1e-3, gt=0, description="The perturbation's scale.")

    def make_optimizer(self, groups, run, model):
        from rayft_core.train.optim import whole_tensors

        whole_tensors(run, "MeZO")
        return ZerothOrderSGD(groups, lr=run.train.learning_rate, eps=self.eps, seed=run.train.seed)

    def problems(self, run):
        out = []
        if run.deepspeed.zero_stage:
            out.append(
                f"deepspeed.zero_stage: MeZO perturbs whole weights in place; set it to 0, got {run.deepspeed.zero_stage}"
            )
        if run.train.gradient_accumulation_steps != 1:
            out.append("train.gradient_accumulation_steps: MeZO takes one projected gradient per step; set it to 1")
        return out


class ZerothOrderSGD(CountsSteps, torch.optim.Optimizer):
    """SGD on SPSA's projected gradient. The supervised loop calls ``forward_only(model, objective, batch)`` instead
    of a backward pass (rayft_core.train.loop), then ``step()`` as for any optimizer."""

    def __init__(self, groups: list[dict], lr: float, eps: float, seed: int):
        super().__init__(groups, {"lr": lr, "weight_decay": 0.0})
        self.eps, self.seed = eps, seed
        self.steps, self.projected_grad = 0, 0.0

    def _directions(self):
        """(parameter, z) for every parameter in order, z drawn from this step's seed: the same each time."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.steps)
        for group in self.param_groups:
            for p in group["params"]:
                yield group, p, torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.device, p.dtype)

    @torch.no_grad()
    def _perturb(self, scale: float) -> None:
        for _, p, z in self._directions():
            p.add_(z, alpha=scale * self.eps)

    @torch.no_grad()
    def forward_only(self, model: torch.nn.Module, objective: Any, batch: dict) -> tuple[torch.Tensor, dict]:
        """The loss at theta + eps z and theta - eps z; leaves theta as it was and the projected gradient for step.
        Returns the mean of the two as the batch's loss, with its metrics."""
        self._perturb(+1.0)
        plus, metrics = objective(model, batch)
        self._perturb(-2.0)
        minus, _ = objective(model, batch)
        self._perturb(+1.0)
        sums = torch.tensor([float(plus), float(minus), float(metrics["loss"][1])], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            sums = sums.to(next(model.parameters()).device)
            torch.distributed.all_reduce(sums)
        n = max(float(sums[2]), 1.0)
        self.projected_grad = float(sums[0] - sums[1]) / n / (2 * self.eps)
        loss = (plus + minus) / 2
        return loss, {**metrics, "loss": (float(loss), metrics["loss"][1])}

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        for group, p, z in self._directions():
            p.add_(z, alpha=-group["lr"] * self.projected_grad)
            if group["weight_decay"]:
                p.add_(p, alpha=-group["lr"] * group["weight_decay"])
        self.steps += 1
        return None
