"""Stage orpo: ORPO (Hong et al. 2024). SFT on the chosen answer plus beta x a penalty on the log
odds ratio of chosen over rejected; no reference model. Log-probabilities are token means."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rayft_core.train.preference import PairStage, halves, pair_logps, pair_metrics, valid_pairs


def log_odds(mean_logps: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) of an answer whose mean token probability is p = exp(mean_logps) < 1."""
    return mean_logps - torch.log1p(-torch.exp(mean_logps).clamp(max=1 - 1e-6))


def orpo_loss(
    chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses (NLL of chosen + beta x odds-ratio loss) and rewards, from mean log-probabilities [pairs]."""
    odds_ratio_loss = -F.logsigmoid(log_odds(chosen_logps) - log_odds(rejected_logps))
    return -chosen_logps + beta * odds_ratio_loss, beta * chosen_logps.detach(), beta * rejected_logps.detach()


class OddsRatioPreference(PairStage):
    name = "orpo"

    def objective(self, run, tokenizer, device, ds_config):
        beta = run.stage.beta

        def step(model, batch):
            sums, counts = pair_logps(model, batch, run.stage.ld_alpha)
            pc, pr = halves(sums / counts.clamp(min=1))
            valid = valid_pairs(counts)
            losses, chosen_rewards, rejected_rewards = orpo_loss(pc, pr, beta)
            return (losses * valid).sum(), pair_metrics(losses, valid, chosen_rewards, rejected_rewards, pc, pr)

        return step


STAGE = OddsRatioPreference()
