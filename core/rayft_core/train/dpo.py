"""Stage dpo: direct preference optimisation (Rafailov et al. 2023), with the hinge (SLiC) and IPO
losses, label smoothing (cDPO) and DPO-ftx, against a frozen reference (see preference.Reference).

The implicit reward of an answer is beta * (log pi(answer) - log ref(answer)); the loss pushes the
chosen answer's reward above the rejected one's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rayft_core.train.losses import sequence_logps
from rayft_core.train.preference import PairStage, Reference, halves, masked_mean, pair_metrics, valid_pairs


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the chosen and rejected rewards, from answer log-probabilities [pairs]."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    margin = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * margin) * (1 - label_smoothing) - F.logsigmoid(-beta * margin) * label_smoothing
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * margin)
    elif loss_type == "ipo":  # IPO regresses the margin to 1 / (2 beta); its inputs are length-averaged
        losses = (margin - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss type {loss_type!r}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


class DirectPreference(PairStage):
    name = "dpo"

    def objective(self, run, tokenizer, device, ds_config):
        cfg = run.stage
        reference = Reference(run, tokenizer, device, ds_config)

        def step(model, batch):
            sums, counts = sequence_logps(model, batch)
            ref_sums = reference.logps(model, batch)
            mean = sums / counts.clamp(min=1)
            policy, ref = (mean, ref_sums / counts.clamp(min=1)) if cfg.loss_type == "ipo" else (sums, ref_sums)
            (pc, pr), (rc, rr) = halves(policy), halves(ref)
            valid = valid_pairs(counts)
            losses, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, cfg.beta, cfg.loss_type, cfg.label_smoothing)
            if cfg.ftx:  # DPO-ftx: SFT on the chosen answer (its mean token negative log-likelihood)
                losses = losses - cfg.ftx * halves(mean)[0]
            return masked_mean(losses, valid), pair_metrics(losses, valid, chosen_rewards, rejected_rewards, pc, pr)

        return step


STAGE = DirectPreference()
