"""Pad a batch of variable-length examples into tensors."""

from __future__ import annotations

from typing import Sequence

import torch

from rayft_core.data import IGNORE_INDEX


def pad_batch(input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids/attention_mask/labels, each [batch, seq]."""
    longest = max(len(x) for x in input_ids)
    batch = len(input_ids)
    ids = torch.full((batch, longest), pad_token_id, dtype=torch.long)
    lab = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((batch, longest), dtype=torch.long)
    for i, (x, y) in enumerate(zip(input_ids, labels)):
        n = len(x)
        ids[i, :n] = torch.tensor(x, dtype=torch.long)  # copies: Ray hands out read-only arrays
        lab[i, :n] = torch.tensor(y, dtype=torch.long)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}
