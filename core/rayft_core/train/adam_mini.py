"""Adam-mini (Zhang et al. 2024, "Adam-mini: Use Fewer Learning Rates To Gain More", arXiv:2406.16793), as
``train.optimizer: adam_mini`` (LLaMA-Factory's use_adam_mini).

AdamW keeps a second moment per weight; Adam-mini keeps one per block of weights that share a curvature scale,
the mean of the squared gradient over the block, so its optimizer state is the first moment and a few scalars:
about half of AdamW's. The blocks, as the authors' implementation (1.1.1) cuts a Transformer:

- embeddings and the output head: one per token (row);
- query and key projections: one per attention head;
- value, attention output and MLP projections, and any other matrix: one per output neuron (row);
- norm scales: one per tensor; biases: one per weight (plain Adam).

It needs each tensor whole, so it runs where Muon does (ZeRO-0; rayft_core.train.optim.problems).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

PER_HEAD = ("q_proj", "k_proj")


def block_sizes(model: nn.Module) -> dict[int, int]:
    """id(parameter) -> how many of its weights share one second moment (1: each its own)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(config, "num_attention_heads", None)
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else None)
    sizes = {}
    for name, p in model.named_parameters():
        short = name.lower()
        per_head = head_dim and short.endswith(tuple(f"{n}.weight" for n in PER_HEAD)) and p.shape[0] % head_dim == 0
        if p.ndim == 1:
            sizes[id(p)] = 1 if short.endswith("bias") else p.numel()
        elif per_head:
            sizes[id(p)] = head_dim * p.shape[1]
        else:  # a row: a token of the embeddings or head, an output neuron of any other matrix
            sizes[id(p)] = p[0].numel()
    return sizes


class AdamMini(torch.optim.Optimizer):
    """AdamW with one second moment per block (``blocks``: id(parameter) -> block size, from ``block_sizes``)."""

    def __init__(self, groups: list[dict], blocks: dict[int, int], lr: float, betas: tuple[float, float], eps: float):
        super().__init__(groups, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": 0.0})
        self.blocks = blocks

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                grad = p.grad.reshape(-1, self.blocks.get(id(p), 1))
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(grad)
                    state["v"] = grad.new_zeros(grad.shape[0], 1)
                state["step"] += 1
                state["m"].lerp_(grad, 1 - beta1)
                state["v"].mul_(beta2).add_(grad.square().mean(dim=1, keepdim=True), alpha=1 - beta2)
                step = state["step"]
                denom = (state["v"] / (1 - beta2**step)).sqrt_().add_(eps)
                p.mul_(1 - lr * group["weight_decay"])  # decoupled, as AdamW's
                p.add_((state["m"] / denom).view_as(p), alpha=-lr / (1 - beta1**step))
        return loss
