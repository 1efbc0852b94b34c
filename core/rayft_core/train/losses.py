"""Causal LM loss computed only where labels are set, in chunks, never holding all logits.

With a 150k-token vocabulary the full fp32 logits of one 8 x 512 batch take 2.5 GB and their
gradient as much again. Here the decoder's hidden states are gathered at the positions that
carry a label (padding and masked prompt tokens are skipped outright) and go through the output
head and cross-entropy a chunk at a time:

- fused (the usual case): each chunk's gradient with respect to the hidden states (and to the head's
  weight, only when the head trains) is computed in the forward pass, so backward is a multiply and
  no logits are recomputed; a frozen head (LoRA) costs one matmul forward and one backward. A frozen
  head sharded by ZeRO-3 is gathered for the call (its weight needs no gradient);
- checkpointed (trainable heads sharded by ZeRO-3, heads with a bias or wrapped by PEFT): the head
  module is called per chunk under activation checkpointing, and recomputed in backward, where
  ZeRO-3 fetches a trainable weight again. ZeRO-3 gathers the weight at every call of the head, a
  collective, so every rank calls it as many times: as often as the rank with the most labelled
  tokens needs (the others pass empty chunks), else the ranks' collectives mismatch and training
  crashes or hangs (with a 150k vocabulary a chunk is ~220 tokens, so ranks differ in most steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rayft_core.data import IGNORE_INDEX
from rayft_core.model.head import logit_scale, logit_softcap
from rayft_core.model.moe import load_balancing_loss, router_aux_loss
from rayft_core.model.zero3 import gathered

CHUNK_ELEMENTS = 2**25  # logits per chunk: 128 MiB in fp32, whatever the vocabulary


def _chunk_rows(vocab_size: int) -> int:
    return max(16, CHUNK_ELEMENTS // vocab_size)


# A token loss's weight of each token, from its fp32 logits [tokens, vocab] and cross-entropy [tokens]; held
# constant (no gradient flows through it).
TokenWeights = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i w_i CE(hidden_i @ weight.T, target_i), with its gradients computed chunk by chunk in forward; w_i = 1,
    or ``token_weights(logits, ce)`` held constant (TOKEN_WEIGHTS)."""

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        softcap: float | None,
        token_weights: TokenWeights | None,
    ) -> torch.Tensor:
        rows = _chunk_rows(weight.shape[0])
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for i in range(0, hidden.shape[0], rows):
            h, t = hidden[i : i + rows], targets[i : i + rows]
            logits = (h @ weight.T).float()  # [chunk, vocab]
            if softcap:  # Gemma-2: cap * tanh(logits / cap), whose derivative is 1 - tanh^2
                tanh = logits.div_(softcap).tanh_()
                logits = tanh * softcap
            lse = torch.logsumexp(logits, dim=-1)
            ce = lse - logits.gather(1, t[:, None]).squeeze(1)
            w = token_weights(logits, ce) if token_weights else None  # before the logits turn into probabilities
            total += (ce * w).sum() if w is not None else ce.sum()
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
            probs[torch.arange(t.shape[0], device=t.device), t] -= 1.0  # d CE / d logits = softmax - one_hot
            if w is not None:
                probs.mul_(w[:, None])
            if softcap:
                probs.mul_(1.0 - tanh.square_())
            g = probs.to(h.dtype)
            grad_hidden[i : i + rows] = g @ weight
            if grad_weight is not None:
                grad_weight.addmm_(g.T.float(), h.float())
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_w = (grad_weight * grad_total).to(ctx.weight_dtype) if grad_weight is not None else None
        return grad_hidden * grad_total.to(grad_hidden.dtype), grad_w, None, None, None


def _chunk_ce_sum(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: nn.Module,
    softcap: float | None,
    token_weights: TokenWeights | None = None,
) -> torch.Tensor:
    logits = head(hidden).float()  # [chunk, vocab]
    if softcap:  # Gemma-2 caps final logits: cap * tanh(logits / cap)
        logits = torch.tanh(logits / softcap) * softcap
    ce = F.cross_entropy(logits, targets, reduction="none")
    if token_weights is None:
        return ce.sum()
    with torch.no_grad():
        w = token_weights(logits.detach(), ce.detach())
    return (ce * w).sum()


def dft_weights(logits: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
    """DFT (Wu et al. 2025, "On the Generalization of SFT: A Reinforcement Learning Perspective with Reward
    Rectification"): the probability the model gives the label, p_t = exp(-CE_t)."""
    return torch.exp(-ce)


def eaft_weights(alpha: float) -> TokenWeights:
    """EAFT as LLaMA-Factory 0.9.5 defines it (use_eaft_loss, eaft_alpha): (H_20 / 3) ** alpha, H_20 the entropy of
    the distribution renormalised over the 20 most likely tokens: confident positions weigh less."""

    def weights(logits: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
        top = torch.topk(logits, k=min(20, logits.shape[-1]), dim=-1).values
        logp = top - torch.logsumexp(top, dim=-1, keepdim=True)
        return (-(logp.exp() * logp).sum(-1) / 3.0).pow(alpha)

    return weights


def token_weights(train: Any) -> TokenWeights | None:
    """The run's token loss (train.token_loss) as its weights; None for plain cross-entropy."""
    builtins = {"cross_entropy": None, "dft": dft_weights, "eaft": eaft_weights(train.eaft_alpha)}
    if train.token_loss in builtins:
        return builtins[train.token_loss]
    from rayft_core.plugins import load_object

    return load_object(train.token_loss, "train.token_loss")


def _can_fuse(head: nn.Module) -> bool:
    """A plain bias-free Linear whose weight is whole, or frozen (a frozen ZeRO-3 shard is gathered)."""
    if type(head) is not nn.Linear or head.bias is not None:
        return False
    return not hasattr(head.weight, "ds_id") or not head.weight.requires_grad


def _chunk_count(n: int, rows: int, head: nn.Module, device: torch.device) -> int:
    """Chunks of `rows` for n labelled tokens; under ZeRO-3 the most any rank needs (see the module docstring)."""
    chunks = -(-n // rows)
    sharded = any(hasattr(p, "ds_id") for p in head.parameters())
    if sharded and torch.distributed.is_available() and torch.distributed.is_initialized():
        count = torch.tensor([chunks], dtype=torch.long, device=device)
        torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
        chunks = int(count.item())
    return chunks


def decoder_hidden(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[nn.Module, torch.Tensor]:
    """The causal LM inside ``model`` (PEFT wraps it) and its last hidden states [batch, seq, hidden]."""
    base, outputs = decoder_outputs(model, batch)
    return base, outputs.last_hidden_state


def decoder_outputs(
    model: nn.Module, batch: dict[str, torch.Tensor], router_logits: bool = False
) -> tuple[nn.Module, Any]:
    """The causal LM inside ``model`` and its decoder's outputs (with ``router_logits``: each MoE layer's)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # Packed rows carry position_ids and no attention mask (see rayft_core.data.packing). No KV cache:
    # with one, transformers skips the packed-sequence mask and examples would attend to each other.
    outputs = _decoder(base)(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
        use_cache=False,
        **({"output_router_logits": True} if router_logits else {}),
    )
    return base, outputs


def _decoder(base: nn.Module) -> nn.Module:
    """The decoder stack under the head: the model's base model (`model`, `transformer`, `backbone`...), or its
    `model` attribute where the base-model prefix names something else (Llama 4's text model)."""
    for candidate in (base.base_model, getattr(base, "model", None), base.get_decoder()):
        if isinstance(candidate, nn.Module) and candidate is not base and not isinstance(candidate, nn.Linear):
            return candidate
    raise ValueError(f"{type(base).__name__}: no decoder stack found under the head")


def _labelled(
    base: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, shifted: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The head's inputs at positions that predict a label, those labels, and the keep mask [batch, seq-1].
    ``shifted``: labels[t] is already what token t predicts (a sequence split across workers, where the next
    token may be on another worker: rayft_core.train.sequence_parallel); the mask is then [batch, seq]."""
    if not shifted:
        labels, hidden = labels[:, 1:], hidden[:, :-1]  # token t predicts t+1
    keep = labels != IGNORE_INDEX
    return _head_input(base, hidden[keep]), labels[keep], keep


def _targets(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """The batch's labels, and whether they are shifted already (a sequence-parallel slice's shift_labels)."""
    return (batch["shift_labels"], True) if "shift_labels" in batch else (batch["labels"], False)


def _head_input(base: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Hidden states scaled by the family's logit scale (rayft_core.model.head): the head is linear and bias-free
    where a family scales, so scaling its input scales the logits, and the fused paths stay as they are."""
    scale = logit_scale(base.config)
    return hidden if scale == 1.0 else hidden * scale


def compute_causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over labelled positions, and their count."""
    total, n = causal_lm_loss_sum(model, batch)
    return (total / n if n else total), n


def causal_lm_loss_sum(
    model: nn.Module, batch: dict[str, torch.Tensor], weights: TokenWeights | None = None
) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled positions (each token's times ``weights``, held constant:
    DFT, EAFT), and their count (0: a graph of zeros, so every rank still runs backward)."""
    base, hidden = decoder_hidden(model, batch)
    return _loss_sum(base, hidden, *_targets(batch), weights=weights)


def _loss_sum(
    base: nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    shifted: bool = False,
    weights: TokenWeights | None = None,
) -> tuple[torch.Tensor, int]:
    head = base.get_output_embeddings()
    hidden, targets, _ = _labelled(base, hidden, labels, shifted)
    n = targets.numel()
    softcap = logit_softcap(base.config)
    fused = _can_fuse(head) and torch.is_grad_enabled()
    rows = _chunk_rows(base.config.vocab_size)
    chunks = 0 if fused else _chunk_count(n, rows, head, hidden.device)  # a collective under ZeRO-3: every rank
    if fused:
        with gathered([head.weight]):  # a collective under ZeRO-3 too: every rank, even one with nothing to learn
            if n:
                return _LinearCrossEntropy.apply(hidden, head.weight, targets, softcap, weights), n
    if n == 0 and chunks == 0:  # nothing to learn in this micro-batch; keep the graph so every rank runs backward
        return hidden.sum() * 0.0 + sum(p.sum() * 0.0 for p in head.parameters()), 0
    total = hidden.sum() * 0.0  # in the graph even when this rank's chunks are all empty
    for i in range(0, chunks * rows, rows):  # past n: empty chunks, so every rank calls the head as often
        h, t = hidden[i : i + rows], targets[i : i + rows]
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_ce_sum, h, t, head, softcap, weights, use_reentrant=False)
        else:
            total = total + _chunk_ce_sum(h, t, head, softcap, weights)
    return total, n


def lm_objective(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    router_aux_loss_coef: float | None = None,
    weights: TokenWeights | None = None,
) -> tuple[torch.Tensor, dict[str, tuple[float, float]]]:
    """The objective of pt and sft: the causal LM loss (``weights``: the run's token loss, see token_weights)
    summed over labelled tokens, reported token-weighted. A mixture of experts adds its load-balancing loss times
    ``router_aux_loss_coef`` (None: the model config's router_aux_loss_coef), weighted by the batch's tokens like
    the loss, and reports it as aux_loss."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if load_balancing_loss(base) is None:
        total, n = causal_lm_loss_sum(model, batch, weights)
        return total, {"loss": (total.item(), n)}
    base, outputs = decoder_outputs(model, batch, router_logits=True)
    total, n = _loss_sum(base, outputs.last_hidden_state, *_targets(batch), weights=weights)
    aux = router_aux_loss(base, outputs.router_logits, batch.get("attention_mask"))
    coef = router_aux_loss_coef if router_aux_loss_coef is not None else getattr(base.config, "router_aux_loss_coef", 0)
    metrics = {"loss": (total.item(), n), "aux_loss": (aux.item() * n, n)}
    return total + (coef or 0.0) * aux * n, metrics


class _LinearLogProb(torch.autograd.Function):
    """log p(target_i | hidden_i) under a frozen head, per row; d/d hidden computed chunk by chunk in forward."""

    @staticmethod
    def forward(
        ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None
    ) -> torch.Tensor:
        rows = _chunk_rows(weight.shape[0])
        grad_hidden = torch.empty_like(hidden)
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for i in range(0, hidden.shape[0], rows):
            h, t = hidden[i : i + rows], targets[i : i + rows]
            logits = (h @ weight.T).float()
            if softcap:
                tanh = logits.div_(softcap).tanh_()
                logits = tanh * softcap
            lse = torch.logsumexp(logits, dim=-1)
            out[i : i + rows] = logits.gather(1, t[:, None]).squeeze(1) - lse
            grad = logits.sub_(lse[:, None]).exp_().neg_()  # d logp / d logits = one_hot - softmax
            grad[torch.arange(t.shape[0], device=t.device), t] += 1.0
            if softcap:
                grad.mul_(1.0 - tanh.square_())
            grad_hidden[i : i + rows] = grad.to(h.dtype) @ weight
        ctx.save_for_backward(grad_hidden)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_out[:, None].to(grad_hidden.dtype), None, None, None


def _chunk_logp(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, softcap: float | None) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


def labelled_logps(base: nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(label) at every labelled position [batch, seq-1] (0 elsewhere, fp32), and the keep mask.

    ``base``, ``hidden``: from decoder_hidden. A frozen head (adapters) takes the fused path; a trainable
    one is run per chunk under activation checkpointing, so no [tokens, vocab] tensor outlives its chunk.
    """
    head = base.get_output_embeddings()
    hidden_kept, targets, keep = _labelled(base, hidden, labels)
    softcap = logit_softcap(base.config)
    if torch.is_grad_enabled() and type(head) is nn.Linear and head.bias is None and not head.weight.requires_grad:
        with gathered([head.weight]):
            token_logps = _LinearLogProb.apply(hidden_kept, head.weight, targets, softcap)
    else:
        rows = _chunk_rows(base.config.vocab_size)
        pieces = []
        chunks = _chunk_count(targets.numel(), rows, head, hidden.device)  # a collective under ZeRO-3: every rank
        for i in range(0, chunks * rows, rows):  # past the tokens: empty chunks, so every rank calls the head as often
            h, t = hidden_kept[i : i + rows], targets[i : i + rows]
            if torch.is_grad_enabled():
                pieces.append(checkpoint(_chunk_logp, h, t, head, softcap, use_reentrant=False))
            else:
                pieces.append(_chunk_logp(h, t, head, softcap))
        token_logps = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    out = torch.zeros(keep.shape, dtype=torch.float32, device=hidden.device).masked_scatter(keep, token_logps)
    if targets.numel() == 0:  # keep the graph so every rank runs backward
        out = out + hidden.sum() * 0.0
    return out, keep


@torch.no_grad()
def labelled_entropy(base: nn.Module, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The model's entropy at every labelled position [batch, seq-1] (0 elsewhere, fp32), chunk by chunk over
    the vocabulary; ``keep`` is labelled_logps's mask."""
    head = base.get_output_embeddings()
    h = _head_input(base, hidden[:, :-1][keep])
    softcap = logit_softcap(base.config)
    rows = _chunk_rows(base.config.vocab_size)
    pieces = []
    for i in range(0, _chunk_count(h.shape[0], rows, head, h.device) * rows, rows):  # equal head calls on every rank
        logits = head(h[i : i + rows]).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        logp = torch.log_softmax(logits, dim=-1)
        pieces.append(-(logp.exp() * logp).sum(-1))
    values = torch.cat(pieces) if pieces else h.new_zeros(0, dtype=torch.float32)
    return torch.zeros(keep.shape, dtype=torch.float32, device=h.device).masked_scatter(keep, values)


def sequence_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its labelled tokens [batch] (fp32), and their count [batch].
    The preference stages' building block."""
    base, hidden = decoder_hidden(model, batch)
    logps, keep = labelled_logps(base, hidden, batch["labels"])
    return logps.sum(-1), keep.sum(-1)
