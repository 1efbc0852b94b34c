"""Stage dpo: direct preference optimisation (Rafailov et al. 2023), with the hinge (SLiC) and IPO
losses, label smoothing (cDPO), DPO-ftx, LD-DPO's length weighting (preference.pair_logps) and a BCO term,
against a frozen reference (see preference.Reference).

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


def bco_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """BCO (binary classifier optimisation, Jung et al. 2024, arXiv:2404.04656) per pair: the chosen answer's
    reward classified above the baseline ``delta``, the rejected one's below it."""
    return -F.logsigmoid(beta * chosen_ratio - delta) - F.logsigmoid(-(beta * rejected_ratio - delta))


class RewardBaseline:
    """BCO's baseline: the running mean of each micro-batch's mean reward (chosen and rejected answers), over every
    training micro-batch of every worker so far, as TRL's RunningMoments keeps it for LLaMA-Factory's
    pref_bco_weight (which also updates it on evaluation batches; rayft does not). Carried in checkpoints."""

    def __init__(self) -> None:
        self.mean, self.count = 0.0, 0.0

    def update(self, rewards: torch.Tensor, valid: torch.Tensor) -> float:
        """Add this micro-batch's mean reward over its valid pairs (on every worker: a collective) and return
        the new mean. ``rewards``: chosen then rejected [2 x pairs]."""
        pairs = valid.sum()
        stats = torch.stack([(rewards * valid.repeat(2)).sum() / (2 * pairs).clamp(min=1), (pairs > 0).float()])
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
        total, count = stats.tolist()
        if count:
            self.mean = (self.mean * self.count + total) / (self.count + count)
            self.count += count
        return self.mean

    def state(self) -> dict[str, float]:
        return {"bco_mean": self.mean, "bco_count": self.count}

    def restore(self, state: dict[str, float]) -> None:
        self.mean, self.count = state.get("bco_mean", 0.0), state.get("bco_count", 0.0)


class DirectPreference(PairStage):
    name = "dpo"

    def check(self, run, model):
        return reference_problems(run)

    def objective(self, run, tokenizer, device, ds_config):
        cfg = run.stage
        reference = Reference(run, tokenizer, device, ds_config)
        baseline = RewardBaseline()

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
            if cfg.bco_weight:  # evaluation reads the baseline, training moves it
                rewards = torch.cat([chosen_rewards, rejected_rewards])
                delta = baseline.update(rewards, valid) if torch.is_grad_enabled() else baseline.mean
                bco = bco_loss(pc - rc, pr - rr, cfg.beta, delta)
                losses = (losses + cfg.bco_weight * bco) / (1 + cfg.bco_weight)  # LLaMA-Factory's weighting
            if cfg.ftx:  # DPO-ftx: SFT on the chosen answer (its mean token negative log-likelihood)
                losses = losses - cfg.ftx * halves(mean)[0]
            return (losses * valid).sum(), pair_metrics(losses, valid, chosen_rewards, rejected_rewards, pc, pr)

        step.state, step.restore = baseline.state, baseline.restore  # what a checkpoint carries (train.loop)
        return step


STAGE = DirectPreference()
