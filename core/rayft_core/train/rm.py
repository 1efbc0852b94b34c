"""Stage rm: a reward model. A value head on the model (or on its adapter) scores the last token of
an answer; the pairwise loss -log sigmoid(r_chosen - r_rejected) ranks chosen answers above rejected
ones (Bradley-Terry). rewards/accuracies is the pairwise accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rayft_core.config import RunConfig
from rayft_core.data import IGNORE_INDEX
from rayft_core.model.value_head import ValueHeadModel, hidden_size_of
from rayft_core.train.preference import PairStage, halves, pair_metrics, valid_pairs, without_dropout


def pairwise_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Per-pair Bradley-Terry loss [pairs]."""
    return -F.logsigmoid(chosen_scores - rejected_scores)


class RewardModelling(PairStage):
    name = "rm"

    def check(self, run, model):
        if hidden_size_of(model.config) is None:
            return [
                f"stage: rm puts a value head on the last hidden state, and {run.model.name_or_path} "
                "declares no hidden_size; train the reward model on a causal LM that has one"
            ]
        return []

    def prepare_model(self, model: nn.Module, run: RunConfig) -> nn.Module:
        size = hidden_size_of(model.config)
        if size is None:
            raise ValueError(
                "stage rm puts a value head on the model's last hidden state, and this model's config "
                "has no hidden_size"
            )
        return ValueHeadModel(without_dropout(model), size)

    def objective(self, run, tokenizer, device, ds_config):
        def step(model, batch):
            scores = model.score(batch)
            (sc, sr) = halves(scores)
            valid = valid_pairs((batch["labels"] != IGNORE_INDEX).sum(-1))
            losses = pairwise_loss(sc, sr)
            return (losses * valid).sum(), pair_metrics(losses, valid, sc.detach(), sr.detach())

        return step


STAGE = RewardModelling()
