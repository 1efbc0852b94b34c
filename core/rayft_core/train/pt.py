"""Stage pt: continued pre-training on raw text; every token is predicted."""

from __future__ import annotations

import functools
from typing import Any

from rayft_core.config import RunConfig
from rayft_core.train.losses import lm_objective, token_weights
from rayft_core.train.stage import SupervisedStage


class Pretrain(SupervisedStage):
    name = "pt"

    def encode_rows(self, rows: list[dict], tokenizer: Any, run: RunConfig) -> dict[str, list]:
        """Each document + EOS, cut into pieces of max_seq_len tokens: one example per piece.

        Documents are never joined here: packing (on by default for pt) fills rows with them while
        keeping each one's attention to itself.
        """
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        n = run.data.max_seq_len
        pieces = []
        for ids in tokenizer([r["text"] for r in rows], add_special_tokens=False)["input_ids"]:
            ids = ids + eos
            pieces.append([ids[i : i + n] for i in range(0, len(ids), n)])
        return {
            "input_ids": [p for doc in pieces for p in doc],
            "labels": [list(p) for doc in pieces for p in doc],
            "row_of_example": [r for r, doc in enumerate(pieces) for _ in doc],
        }

    def objective(self, run, tokenizer, device, ds_config):
        return functools.partial(
            lm_objective, router_aux_loss_coef=run.model.router_aux_loss_coef, weights=token_weights(run.train)
        )


STAGE = Pretrain()
