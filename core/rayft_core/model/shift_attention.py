"""LongLoRA's shifted sparse attention, S2-Attn (Chen et al. 2024, "LongLoRA: Efficient Fine-tuning of Long-Context
Large Language Models", ICLR 2024), as a transformers attention function (model.shift_attn; LLaMA-Factory's
shift_attn): in training, the sequence is cut into groups of a quarter of its length and each token attends within
its group only; half of the heads use groups shifted by half a group, so information flows between neighbouring
groups. Attention costs a quarter of full attention's. In evaluation and generation it is full attention (SDPA).

Unlike LongLoRA's code, which rolls the shifted heads' tokens and applies a causal mask in the rolled order (the
last group's wrapped-around first tokens then see the sequence's end), each group here keeps the model's own mask
(causal, padding, packed sequences) between the tokens it holds: no token sees a later one. Any family whose
attention goes through transformers' attention functions takes it; registered under NAME.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

NAME = "rayft_s2"
GROUP_RATIO = 0.25  # LongLoRA's, and LLaMA-Factory's group_size_ratio


def register() -> str:
    """Register the attention function and its mask builder (SDPA's) with transformers; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, shifted_sparse_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME


def group_indices(length: int, group: int, shift: int) -> torch.Tensor:
    """[groups, group] positions of the tokens in each group, the sequence rolled left by ``shift`` and padded with
    -1 to whole groups (a padded slot is nobody: it sees and is seen by nothing)."""
    order = torch.arange(length).roll(-shift)
    groups = -(-length // group)
    return torch.cat([order, order.new_full((groups * group - length,), -1)]).view(groups, group)


def _group_mask(attention_mask: torch.Tensor | None, index: torch.Tensor, batch: int) -> torch.Tensor:
    """[batch * groups, 1, group, group] bool: which keys each query of a group may see, read from the model's mask
    between those positions (causal where the model passed none)."""
    real = index >= 0
    i, j = index.clamp(min=0)[:, :, None], index.clamp(min=0)[:, None, :]
    both = real[:, :, None] & real[:, None, :]
    if attention_mask is None:
        allowed = ((j <= i) & both).unsqueeze(0).expand(batch, -1, -1, -1)  # [batch, groups, group, group]
    else:
        mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0  # float: 0 = attend
        allowed = mask[:, 0].expand(batch, -1, -1)[:, i, j] & both
    # Every query sees itself: a real token did already, and a padded slot or padding token (whose output nobody
    # reads) would otherwise see nothing, which makes SDPA's softmax, and its gradient, NaN.
    allowed = allowed | torch.eye(index.shape[1], dtype=torch.bool, device=index.device)
    return allowed.reshape(-1, 1, *allowed.shape[-2:])


def _grouped(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[batch, heads, length, dim] -> [batch * groups, heads, group, dim] in ``index``'s order (padded slots zero)."""
    taken = x[:, :, index.clamp(min=0)] * (index >= 0)[None, None, :, :, None]  # [b, h, groups, group, d]
    return taken.transpose(1, 2).reshape(-1, x.shape[1], index.shape[1], x.shape[-1])


def _ungrouped(y: torch.Tensor, index: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """The inverse of _grouped: [batch * groups, heads, group, dim] -> [batch, heads, length, dim]."""
    heads, dim = y.shape[1], y.shape[-1]
    y = y.view(batch, -1, heads, index.shape[1], dim).transpose(1, 2).reshape(batch, heads, -1, dim)
    out = y.new_zeros(batch, heads, length, dim)
    keep = index.view(-1) >= 0
    out[:, :, index.view(-1)[keep]] = y[:, :, keep]
    return out


def shifted_sparse_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query [batch, heads, length, dim] (key, value may have fewer
    heads); returns [batch, length, heads, dim] as SDPA's does."""
    batch, heads, length, _ = query.shape
    group = int(length * GROUP_RATIO)
    if not module.training or group < 2 or key.shape[2] != length:  # full attention: inference, short, cached
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    half = heads // 2
    outputs = []
    for part, shift in ((slice(0, half), 0), (slice(half, heads), group // 2)):
        index = group_indices(length, group, shift).to(query.device)
        q, k, v = (_grouped(x[:, part], index) for x in (query, key, value))
        mask = _group_mask(attention_mask, index, batch)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling)
        outputs.append(_ungrouped(y, index, batch, length))
    return torch.cat(outputs, dim=1).transpose(1, 2).contiguous(), None
