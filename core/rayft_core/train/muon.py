"""Muon on the hidden matrices, AdamW on the rest, as one optimizer (``train.optimizer: muon``).

Muon (Jordan et al. 2024) replaces each 2-D hidden weight's update by its momentum orthogonalised with a
Newton-Schulz iteration (all singular values near one); embeddings, the head, norms and biases keep AdamW. The
update is scaled to AdamW's RMS (0.2 x sqrt(max(rows, columns)), Liu et al. 2025, "Muon is Scalable for LLM
Training"), so one learning rate serves both halves: this is LLaMA-Factory's use_muon (its Moonlight copy), here
through PyTorch's own torch.optim.Muon (adjust_lr_fn="match_rms_adamw") and torch.optim.AdamW.

It needs each matrix whole, so it runs with ZeRO-0 (data parallel, every worker a whole copy): ZeRO-1/2/3 hand
the optimizer flat partitions (rayft_core.train.optim.problems refuses them).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def hidden_matrices(model: nn.Module) -> set[int]:
    """The ids of the parameters Muon updates: 2-D, and neither embeddings nor the head (by name, as
    LLaMA-Factory and DeepSpeed pick them)."""
    return {
        id(p)
        for name, p in model.named_parameters()
        if p.ndim == 2 and "embed" not in name.lower() and "lm_head" not in name.lower()
    }


class MuonWithAdamW(torch.optim.Optimizer):
    """torch.optim.Muon over the hidden matrices of ``groups`` and torch.optim.AdamW over the rest, stepped together.
    Its param_groups are its two optimizers' own (the same dicts), so a scheduler's learning rate reaches both."""

    def __init__(self, groups: list[dict], matrices: set[int], lr: float, betas: tuple[float, float], eps: float):
        def part(muon: bool) -> list[dict]:
            split = [{**g, "params": [p for p in g["params"] if (id(p) in matrices) == muon]} for g in groups]
            return [g for g in split if g["params"]]

        muon_groups, adamw_groups = part(True), part(False)
        self.parts: list[torch.optim.Optimizer] = []
        if muon_groups:
            self.parts.append(torch.optim.Muon(muon_groups, lr=lr, adjust_lr_fn="match_rms_adamw"))
        if adamw_groups:
            self.parts.append(torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps, fused=True))
        super().__init__([p for g in groups for p in g["params"]], {"lr": lr})
        self.param_groups = [g for o in self.parts for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for optimizer in self.parts:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.parts:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [optimizer.state_dict() for optimizer in self.parts]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for optimizer, state in zip(self.parts, state_dict["parts"], strict=True):
            optimizer.load_state_dict(state)
