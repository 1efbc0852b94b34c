"""Optimizers that train part of the model at a time, so optimizer memory is that part's.

- ``RoundAdamW``: AdamW on the part of the model a round names, for ``switch_interval`` steps, then the next
  round's part. ``BlockAdamW``: block coordinate descent, BAdam (Luo et al. 2024, "BAdam: A Memory Efficient Full
  Parameter Optimization Method for Large Language Models", NeurIPS 2024) in its layer mode: one decoder layer
  trains a round. Half Fine-Tuning (examples/plugins/hft.py) trains a random half of each layer a round.
- ``MaskedAdamW``: BAdam's ratio mode: every tensor trains, but only a fraction of its entries, chosen anew every
  ``switch_interval`` steps; Adam's moments are kept for those entries alone.

Both run under DeepSpeed ZeRO-0 on whole fp32 tensors (rayft_core.methods.badam says why), and every rank
derives the same schedule from the step count and seed, so the ranks all-reduce the same gradients.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

SWITCH_MODES = ("ascending", "descending", "random", "fixed")


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


class RoundAdamW(torch.optim.AdamW):
    """AdamW over part of the parameters at a time: ``trainable(round)`` names the part for each round of
    ``switch_interval`` steps. The rest do not require gradients (none is computed or kept for them) and hold no
    Adam state: a switch drops the moments of what stops training, as BAdam does, so a part trained again later
    starts its moments afresh."""

    def __init__(
        self, groups: list[dict], trainable: Callable[[int], list[nn.Parameter]], switch_interval: int, **adamw: Any
    ):
        super().__init__(groups, **adamw)
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
        loss = super().step(closure)  # AdamW skips a parameter without a gradient: those not training
        self.steps += 1
        if self.steps % self.switch_interval == 0:
            self._activate()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "round_steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.steps = state_dict.pop("round_steps")
        self._activate()  # before the moments load: they are the current part's
        super().load_state_dict(state_dict)


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


class MaskedAdamW(torch.optim.Optimizer):
    """AdamW on a fraction ``ratio`` of each tensor's entries: every ``switch_interval`` steps each tensor draws
    which entries train (``mask``: scattered at random, or one adjacent run of them) and its moments restart, held
    for those entries only. Gradients are computed whole; the optimizer keeps 2 x ratio of AdamW's state."""

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

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "mask_steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.steps = state_dict.pop("mask_steps")
        super().load_state_dict(state_dict)
        if self.steps % self.switch_interval:  # mid-round: the round's masks again
            self._draw(self.steps // self.switch_interval * self.switch_interval)
