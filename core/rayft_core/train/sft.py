"""Stage sft: supervised fine-tuning on conversations; the loss covers assistant tokens only
(unless stage.train_on_prompt; only the last assistant turn with stage.mask_history)."""

from __future__ import annotations

import functools
from typing import Any

from rayft_core.config import RunConfig
from rayft_core.data.tokenize import encode_chat_batch
from rayft_core.train.losses import lm_objective, token_weights
from rayft_core.train.stage import SupervisedStage


class SupervisedFineTuning(SupervisedStage):
    name = "sft"

    def encode_rows(self, rows: list[dict], tokenizer: Any, run: RunConfig) -> dict[str, list]:
        """Aligned conversations -> input_ids and labels with the prompt masked, one example per row."""
        enc = encode_chat_batch(
            tokenizer,
            [r["messages"] for r in rows],
            run.data.max_seq_len,
            train_on_prompt=run.stage.train_on_prompt,
            mask_history=run.stage.mask_history,
            batch_tools=[r.get("tools") for r in rows],
        )
        return {**enc, "row_of_example": list(range(len(rows)))}

    def objective(self, run, tokenizer, device, ds_config):
        if run.train.token_loss == "asft":  # DFT anchored to the base by a KL term: a reference on each worker
            from rayft_core.train.asft import asft_objective
            from rayft_core.train.preference import Reference

            return asft_objective(Reference(run, tokenizer, device, ds_config), run.train.asft_alpha)
        return functools.partial(
            lm_objective, router_aux_loss_coef=run.model.router_aux_loss_coef, weights=token_weights(run.train)
        )


STAGE = SupervisedFineTuning()
