"""Stage dpo: direct preference optimisation (Rafailov et al. 2023), with the hinge (SLiC) and IPO
losses, label smoothing (cDPO) and DPO-ftx, against a frozen reference (see preference.Reference).

The implicit reward of an answer is beta * (log pi(answer) - log ref(answer)); the loss pushes the
chosen answer's reward above the rejected one's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rayft_core.train.preference import (
    PairStage,
    Reference,
    halves,
    pair_logps,
    pair_metrics,
    reference_problems,
    valid_pairs,
)


@dataclass(frozen=True)
class PairLoss:
    """A loss on the log-ratio margin of each pair (chosen minus rejected, policy against reference)."""

    fn: Callable[[torch.Tensor, float, float], torch.Tensor]  # (margin, beta, label_smoothing) -> per-pair loss
    length_averaged: bool = False  # computed on log-probabilities averaged over answer tokens


def _sigmoid(margin: torch.Tensor, beta: float, smoothing: float) -> torch.Tensor:
    return -F.logsigmoid(beta * margin) * (1 - smoothing) - F.logsigmoid(-beta * margin) * smoothing


# stage.loss_type -> its loss: a new DPO loss is one entry here and its name in DpoStage.loss_type.
DPO_LOSSES: dict[str, PairLoss] = {
    "sigmoid": PairLoss(_sigmoid),  # DPO's, with cDPO's label smoothing
    "hinge": PairLoss(lambda margin, beta, _: torch.relu(1 - beta * margin)),  # SLiC's
    "ipo": PairLoss(lambda margin, beta, _: (margin - 1 / (2 * beta)) ** 2, length_averaged=True),  # to 1 / (2 beta)
}


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the chosen and rejected rewards, from answer log-probabilities [pairs]."""
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"unknown DPO loss type {loss_type!r}")
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    losses = DPO_LOSSES[loss_type].fn(chosen_ratio - rejected_ratio, beta, label_smoothing)
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


class DirectPreference(PairStage):
    name = "dpo"

    def check(self, run, model):
        return reference_problems(run)

    def objective(self, run, tokenizer, device, ds_config):
        cfg = run.stage
        reference = Reference(run, tokenizer, device, ds_config)

        def step(model, batch):
            sums, counts = pair_logps(model, batch, cfg.ld_alpha)
            ref_sums = reference.logps(model, batch)
            mean = sums / counts.clamp(min=1)
            averaged = DPO_LOSSES[cfg.loss_type].length_averaged
            policy, ref = (mean, ref_sums / counts.clamp(min=1)) if averaged else (sums, ref_sums)
            (pc, pr), (rc, rr) = halves(policy), halves(ref)
            valid = valid_pairs(counts)
            losses, chosen_rewards, rejected_rewards = dpo_loss(
                pc, pr, rc, rr, cfg.beta, cfg.loss_type, cfg.label_smoothing
            )
            if cfg.ftx:  # DPO-ftx: SFT on the chosen answer (its mean token negative log-likelihood)
                losses = losses - cfg.ftx * halves(mean)[0]
            return (losses * valid).sum(), pair_metrics(losses, valid, chosen_rewards, rejected_rewards, pc, pr)

        return step


STAGE = DirectPreference()
