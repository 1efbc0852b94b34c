"""Stage pt: continued pre-training on raw text; every token is predicted."""

from __future__ import annotations

from typing import Any

from rayft_core.config import RunConfig
from rayft_core.data.tokenize import encode_text_batch
from rayft_core.train.losses import compute_causal_lm_loss


def encode_rows(rows: list[dict], tokenizer: Any, run: RunConfig) -> dict[str, list[list[int]]]:
    """Aligned text rows -> blocks of max_seq_len tokens (documents joined with EOS)."""
    return encode_text_batch(tokenizer, [r["text"] for r in rows], run.data.max_seq_len)


compute_loss = compute_causal_lm_loss
