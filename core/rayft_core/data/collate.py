"""Pad a batch of variable-length examples (or packed rows) into tensors."""

from __future__ import annotations

from typing import Any

import torch

from rayft_core.data import IGNORE_INDEX


def pad_batch(examples: dict[str, Any], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row: input_ids and labels [batch, seq], plus

    - attention_mask for plain rows, or
    - position_ids (restarting per packed example; the padding counts on as one more example) and
      no attention mask for packed rows: transformers derives the block-diagonal mask from them.
    """
    input_ids, labels = examples["input_ids"], examples["labels"]
    packed = examples.get("position_ids")
    longest = max(len(x) for x in input_ids)
    batch = len(input_ids)
    ids = torch.full((batch, longest), pad_token_id, dtype=torch.long)
    lab = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((batch, longest), dtype=torch.long)
    pos = torch.arange(longest).repeat(batch, 1)
    for i, (x, y) in enumerate(zip(input_ids, labels)):
        n = len(x)
        ids[i, :n] = torch.as_tensor(x, dtype=torch.long)  # copies: Ray hands out read-only arrays
        lab[i, :n] = torch.as_tensor(y, dtype=torch.long)
        mask[i, :n] = 1
        if packed is not None:
            pos[i, :n] = torch.as_tensor(packed[i], dtype=torch.long)
            pos[i, n:] = torch.arange(longest - n)
    if packed is not None:
        return {"input_ids": ids, "labels": lab, "position_ids": pos}
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def padding_value(column: str, pad_token_id: int) -> Any:
    """A masked row's value in a column of tokenized rows (rayft_core.data.encode): one pad token, no label. Masked rows
    fill an epoch's last step (rayft_core.train.plan.padding_rows) and stand in for a stream's bad rows."""
    if column.endswith("input_ids"):
        return [pad_token_id]
    if column.endswith("labels"):
        return [IGNORE_INDEX]
    if column == "position_ids":
        return [0]
    if column in ("num_tokens", "num_examples"):
        return 0
    if column == "kto_tag":
        return False
    raise ValueError(f"no padding value for the column {column!r} of tokenized rows")
