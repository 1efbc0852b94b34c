"""ASFT, anchored supervised fine-tuning (train.token_loss: asft; LLaMA-Factory's use_asft_loss, asft_alpha): DFT's
loss (each token's cross-entropy times the probability the model gives it, held constant; rayft_core.train.losses)
plus asft_alpha times the KL divergence from the frozen reference's next-token distribution to the model's, at
every labelled token: KL(q || p) = sum_v q_v (log q_v - log p_v), q the reference's. The anchor keeps DFT's
reweighting from drifting away from the model it started as (Zhu et al. 2025, "Anchored Supervised Fine-Tuning").

The reference is the base: with an adapter, the model with its adapter disabled; else a frozen copy
(rayft_core.train.preference.Reference). Both distributions are computed chunk by chunk over the labelled tokens,
never as a [tokens, vocabulary] tensor of the whole batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rayft_core.model.head import logit_softcap
from rayft_core.train.losses import _chunk_count, _chunk_rows, _head_input, _labelled, _targets, decoder_hidden
from rayft_core.train.preference import Reference


def asft_objective(reference: Reference, alpha: float) -> Any:
    """The sft objective of ASFT: (summed loss, metrics) of a batch, the loss over its labelled tokens."""

    def objective(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        base, hidden = decoder_hidden(model, batch)
        with torch.no_grad():
            ref_base, ref_hidden = reference.hidden(model, batch)
        labels, shifted = _targets(batch)
        hidden, targets, keep = _labelled(base, hidden, labels, shifted)
        ref_hidden = _head_input(ref_base, (ref_hidden if shifted else ref_hidden[:, :-1])[keep])
        head, ref_head = base.get_output_embeddings(), ref_base.get_output_embeddings()
        n, rows, softcap = targets.numel(), _chunk_rows(base.config.vocab_size), logit_softcap(base.config)
        total = hidden.sum() * 0.0  # in the graph even when this rank has no labelled token
        kl_total = 0.0
        for i in range(0, _chunk_count(n, rows, head, hidden.device) * rows, rows):  # ZeRO-3: as many on every rank
            with torch.no_grad():
                q_log = F.log_softmax(_logits(ref_head, ref_hidden[i : i + rows], softcap), dim=-1)
            h, t = hidden[i : i + rows], targets[i : i + rows]
            chunk = checkpoint(_chunk_loss, h, t, q_log, head, softcap, alpha, use_reentrant=False)
            total = total + chunk[0]
            kl_total += float(chunk[1])
        return total, {"loss": (total.item(), n), "asft_kl": (kl_total, n)}

    return objective


def _logits(head: nn.Module, hidden: torch.Tensor, softcap: float | None) -> torch.Tensor:
    logits = head(hidden).float()
    return torch.tanh(logits / softcap) * softcap if softcap else logits  # Gemma-2's soft cap


def _chunk_loss(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    q_log: torch.Tensor,
    head: nn.Module,
    softcap: float | None,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed DFT loss + alpha x KL(q || p) of a chunk of labelled tokens, and the summed KL alone (detached)."""
    log_p = F.log_softmax(_logits(head, hidden, softcap), dim=-1)
    ce = -log_p.gather(1, targets[:, None]).squeeze(1)
    kl = (q_log.exp() * (q_log - log_p)).sum(-1)
    return (ce * torch.exp(-ce.detach())).sum() + alpha * kl.sum(), kl.detach().sum()
