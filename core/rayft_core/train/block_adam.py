"""Optimizers that train part of the model at a time, so optimizer memory is that part's.

- ``RoundAdamW``: AdamW on the part of the model a round names, for ``switch_interval`` steps, then the next
  round's part. ``BlockAdamW``: block coordinate descent, BAdam (Luo et al. 2024, "BAdam: A Memory Efficient Full
  Parameter Optimization Method for Large Language Models", NeurIPS 2024) in its layer mode: one decoder layer
  trains a round. Half Fine-Tuning (rayft_core.literature.hft) trains a random half of each layer a round.
- ``MaskedAdamW``: BAdam's ratio mode: every tensor trains, but only a fraction of its entries, chosen anew every
  ``switch_interval`` steps; Adam's moments are kept for those entries alone.

- ``GradientMaskedAdamW``: entries chosen once, by the first gradient's magnitude (SIFT, rayft_core.literature.sift).

All run under DeepSpeed ZeRO-0 on whole fp32 tensors (rayft_core.methods.badam says why), and every rank
derives the same schedule from the step count and seed, so the ranks all-reduce the same gradients.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def block_order(count: int, rounds: int, mode: str, start: int, seed: int) -> int:
    """The block that trains in round ``rounds`` (a round is switch_interval steps): ascending or descending from
    ``start``; random, a fresh permutation of the blocks each cycle through them (seeded); fixed, ``start`` always."""
    if mode == "fixed":
        return start
    if mode == "ascending":
        return (start + rounds) % count
    if mode == "descending":
        return (start - rounds) % count
    cycle, within = divmod(rounds, count)
    order = list(range(count))
    random.Random(seed * 1_000_003 + cycle).shuffle(order)
    return order[within]


class CountsSteps:
    """Mixed in before a torch optimizer whose schedule follows its step count (its rounds, its seeded draws): the
    count rides in the state_dict, and ``restored()`` re-derives what depends on it once a checkpoint is loaded."""

    steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.steps = state_dict.pop("steps")
        super().load_state_dict(state_dict)
        self.restored()

    def restored(self) -> None:
        """What follows from the step count, after a checkpoint loaded it."""


class Rounds(CountsSteps):
    """What makes an optimizer train part of the parameters at a time (mixed in before a torch optimizer class):
    ``trainable(round)`` names the part for each round of ``switch_interval`` steps. The rest do not require
    gradients (none is computed or kept for them) and hold no optimizer state: a switch drops the state of what
    stops training, as BAdam does, so a part trained again later starts its moments afresh."""

    def start_rounds(self, trainable: Callable[[int], list[nn.Parameter]], switch_interval: int) -> None:
        self.trainable, self.switch_interval = trainable, switch_interval
        self.steps = 0
        self._activate()

    @property
    def round(self) -> int:
        return self.steps // self.switch_interval

    def _activate(self) -> None:
        active = {id(p) for p in self.trainable(self.round)}
        for group in self.param_groups:
            for p in group["params"]:
                p.requires_grad_(id(p) in active)
                if id(p) not in active:
                    p.grad = None
                    self.state.pop(p, None)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)  # the optimizer skips a parameter without a gradient: those not training
        self.steps += 1
        if self.steps % self.switch_interval == 0:
            self._activate()
        return loss

    def restored(self) -> None:
        self._activate()  # the loaded state is the current part's; the rest stops requiring gradients


class RoundAdamW(Rounds, torch.optim.AdamW):
    """AdamW on the part of the parameters each round names (Rounds)."""

    def __init__(
        self, groups: list[dict], trainable: Callable[[int], list[nn.Parameter]], switch_interval: int, **adamw: Any
    ):
        torch.optim.AdamW.__init__(self, groups, **adamw)
        self.start_rounds(trainable, switch_interval)


class BlockAdamW(RoundAdamW):
    """BAdam's layer mode: one block (a decoder layer) trains each round, in ``switch_mode`` order (block_order)."""

    def __init__(
        self,
        groups: list[dict],
        blocks: list[list[nn.Parameter]],
        switch_interval: int,
        switch_mode: str = "ascending",
        start_block: int = 0,
        seed: int = 0,
        **adamw: Any,
    ):
        self.blocks, self.switch_mode, self.start_block, self.seed = blocks, switch_mode, start_block, seed
        super().__init__(groups, lambda r: blocks[self.block_of(r)], switch_interval, **adamw)

    def block_of(self, round_: int) -> int:
        return block_order(len(self.blocks), round_, self.switch_mode, self.start_block, self.seed)

    @property
    def active_block(self) -> int:
        return self.block_of(self.round)


class MaskedAdamW(CountsSteps, torch.optim.Optimizer):
    """AdamW on a fraction ``ratio`` of each tensor's entries: every ``switch_interval`` steps each tensor draws
    which entries train (``mask``: scattered at random, or one adjacent run of them) and its moments restart, held
    for those entries only. Gradients are computed whole; the optimizer keeps 2 x ratio of AdamW's state."""

    masks_from_seed = True  # drawn from the seed and step: a restored optimizer draws them again

    def __init__(
        self,
        groups: list[dict],
        ratio: float,
        switch_interval: int,
        mask: str = "adjacent",
        seed: int = 0,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        super().__init__(groups, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": 0.0})
        self.ratio, self.switch_interval, self.mask, self.seed = ratio, switch_interval, mask, seed
        self.steps = 0
        self.index: dict[nn.Parameter, torch.Tensor] = {}

    def _choose(self, p: nn.Parameter, generator: torch.Generator) -> torch.Tensor:
        n = p.numel()
        k = max(1, round(self.ratio * n))
        if self.mask == "scatter":
            return torch.randperm(n, generator=generator)[:k].sort().values
        start = int(torch.randint(0, n - k + 1, (1,), generator=generator))
        return torch.arange(start, start + k)

    def _draw(self, at_step: int) -> None:
        """The masks of the round that starts at ``at_step``, drawn from it and the seed: every rank draws the same,
        and a restored optimizer draws them again instead of storing them."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + at_step)
        self.index = {p: self._choose(p, generator).to(p.device) for g in self.param_groups for p in g["params"]}

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        if self.steps % self.switch_interval == 0:
            self._draw(self.steps)
            for p, index in self.index.items():
                self.state[p] = {"step": 0, "m": p.new_zeros(len(index)), "v": p.new_zeros(len(index))}
        for group in self.param_groups:
            (beta1, beta2), lr, eps, wd = group["betas"], group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                s, index, flat = self.state[p], self.index[p], p.view(-1)
                g = p.grad.reshape(-1)[index]
                s["step"] += 1
                s["m"].mul_(beta1).add_(g, alpha=1 - beta1)
                s["v"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                m_hat = s["m"] / (1 - beta1 ** s["step"])
                v_hat = s["v"] / (1 - beta2 ** s["step"])
                entries = flat[index]
                entries.mul_(1 - lr * wd).addcdiv_(m_hat, v_hat.sqrt().add_(eps), value=-lr)
                flat[index] = entries
        self.steps += 1
        return loss

    def restored(self) -> None:
        if self.steps % self.switch_interval and self.masks_from_seed:  # mid-round: the round's masks again
            self._draw(self.steps // self.switch_interval * self.switch_interval)


class GradientMaskedAdamW(MaskedAdamW):
    """MaskedAdamW whose entries are chosen once, at the first step, as each tensor's ``ratio`` share with the
    largest absolute gradient (SIFT, rayft_core.literature.sift), and kept for the rest of the run. The choice
    depends on that gradient, so a checkpoint stores it."""

    masks_from_seed = False

    def __init__(self, groups: list[dict], ratio: float, **adamw: Any):
        super().__init__(groups, ratio, switch_interval=2**62, **adamw)

    def _draw(self, at_step: int) -> None:
        self.index = {}
        for group in self.param_groups:
            for p in group["params"]:
                k = max(1, round(self.ratio * p.numel()))
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                self.index[p] = grad.reshape(-1).abs().topk(k).indices.sort().values

    def state_dict(self) -> dict[str, Any]:
        params = [p for g in self.param_groups for p in g["params"]]
        return {**super().state_dict(), "chosen": [self.index[p] for p in params] if self.index else []}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        chosen = state_dict.pop("chosen")
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        self.index = {p: c.to(p.device) for p, c in zip(params, chosen)}
