"""Causal LM loss computed only where labels are set, in chunks, never holding all logits.

With a 150k-token vocabulary the full fp32 logits of one 8 x 512 batch take 2.5 GB and their
gradient as much again. Here the decoder's hidden states are gathered at the positions that
carry a label (padding and masked prompt tokens are skipped outright), and each chunk of
positions goes through the output head and cross-entropy under activation checkpointing, so
only one chunk of logits exists at a time, in forward and in backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rayft_core.data import IGNORE_INDEX

CHUNK_TOKENS = 2048


def _chunk_ce_sum(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, softcap: float | None) -> torch.Tensor:
    logits = head(hidden).float()  # [chunk, vocab]
    if softcap:  # Gemma-2 caps final logits: cap * tanh(logits / cap)
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def compute_causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over labelled positions, and their count."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wraps the LM
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]  # [batch, seq-1]: token t predicts t+1
    keep = labels != IGNORE_INDEX
    hidden = hidden[:, :-1][keep]  # [n, hidden]
    targets = labels[keep]  # [n]
    n = targets.numel()
    if n == 0:  # nothing to learn in this micro-batch; keep the graph so every rank runs backward
        return hidden.sum() * 0.0 + sum(p.sum() * 0.0 for p in head.parameters()), 0
    softcap = getattr(base.config, "final_logit_softcapping", None)
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, n, CHUNK_TOKENS):
        h, t = hidden[i : i + CHUNK_TOKENS], targets[i : i + CHUNK_TOKENS]
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_ce_sum, h, t, head, softcap, use_reentrant=False)
        else:
            total = total + _chunk_ce_sum(h, t, head, softcap)
    return total / n, n
