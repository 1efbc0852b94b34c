"""Stage simpo: SimPO (Meng et al. 2024). The reward of an answer is beta x its mean token
log-probability, with no reference model; the loss wants the chosen reward above the rejected one
by a margin gamma."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rayft_core.train.preference import PairStage, halves, pair_logps, pair_metrics, valid_pairs


def simpo_loss(
    chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, beta: float, gamma: float, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and rewards from (length-normalised) answer log-probabilities [pairs]."""
    logits = beta * (chosen_logps - rejected_logps) - gamma
    losses = -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    return losses, beta * chosen_logps.detach(), beta * rejected_logps.detach()


class SimplePreference(PairStage):
    name = "simpo"

    def objective(self, run, tokenizer, device, ds_config):
        cfg = run.stage

        def step(model, batch):
            sums, counts = pair_logps(model, batch, cfg.ld_alpha)
            mean = sums / counts.clamp(min=1)
            pc, pr = halves(mean if cfg.length_normalization else sums)
            valid = valid_pairs(counts)
            losses, chosen_rewards, rejected_rewards = simpo_loss(pc, pr, cfg.beta, cfg.gamma, cfg.label_smoothing)
            if cfg.ftx:
                losses = losses - cfg.ftx * halves(mean)[0]
            return (losses * valid).sum(), pair_metrics(losses, valid, chosen_rewards, rejected_rewards, pc, pr)

        return step


STAGE = SimplePreference()
