"""Stage sft: supervised fine-tuning on conversations; the loss covers assistant tokens only
(unless stage.train_on_prompt; only the last assistant turn with stage.mask_history)."""

from __future__ import annotations

from typing import Any

from rayft_core.config import RunConfig
from rayft_core.data.tokenize import encode_chat_batch
from rayft_core.train.losses import compute_causal_lm_loss


def encode_rows(rows: list[dict], tokenizer: Any, run: RunConfig) -> dict[str, list[list[int]]]:
    """Aligned conversations -> input_ids and labels with the prompt masked, one example per row."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("stage sft renders conversations with a chat template, and this tokenizer has none; "
                         "set model.template (e.g. default) or model.chat_template")
    enc = encode_chat_batch(tokenizer, [r["messages"] for r in rows], run.data.max_seq_len,
                            train_on_prompt=run.stage.train_on_prompt, mask_history=run.stage.mask_history,
                            batch_tools=[r.get("tools") for r in rows])
    return {**enc, "row_of_example": list(range(len(rows)))}


compute_loss = compute_causal_lm_loss
