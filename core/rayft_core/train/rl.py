"""The arithmetic of PPO and GRPO as pure torch functions, apart from any model or trainer.

PPO (Schulman et al. 2017) as used for RLHF (Ziegler et al. 2019; Ouyang et al. 2022): every
response token is an action; its reward is a KL penalty against the reference policy, plus the
reward model's score on the last token (token_rewards); GAE turns rewards and critic values into
advantages and value targets (gae); the policy and the critic are trained on clipped objectives
(policy_loss, value_loss). GRPO (Shao et al. 2024) and RLOO (Ahmadian et al. 2024) drop the critic
and take a sample's advantage relative to the other samples for its prompt (group_advantages,
rloo_advantages).

Token tensors are [batch, response_len] with right padding: `mask` is 1 on the response, 0 after
it. Conventions follow TRL's PPOTrainer and OpenRLHF, so numbers can be compared with theirs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x where mask is 1 (over `dim`, or everything); 0 where the mask is empty.

    torch.where rather than x * mask: padding may hold -inf log-probs, and -inf * 0 is nan.
    """
    mask = mask.bool()
    total = torch.where(mask, x, 0.0).sum() if dim is None else torch.where(mask, x, 0.0).sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over the masked tokens (Bessel's n / (n-1), as TRL and OpenRLHF)."""
    n = int(mask.bool().sum())
    if n < 2:
        raise ValueError(f"the variance of {n} token(s) is undefined: whitening needs at least 2 masked tokens")
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask) * n / (n - 1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """x scaled to unit variance over the mask, and to zero mean unless shift_mean is False.

    Advantages are whitened per batch so the policy step's size does not follow the reward's scale.
    Positions outside the mask are set to 0.
    """
    mean = masked_mean(x, mask)
    whitened = (x - mean) * torch.rsqrt(masked_var(x, mask) + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, 0.0)


@torch.no_grad()
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) and value targets [B, T].

    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1}, computed backwards in
    time over the positions in ``mask`` (the model's tokens). The value after the last one is 0 (the episode ends
    there). Positions outside the mask are not steps: padding, and in a tool-using trajectory the tool results
    between the model's turns, which the environment wrote; t+1 is the next masked position, so a turn's last token
    bootstraps from the next turn's first. A and the returns (A + V, the critic's target) are 0 outside the mask.
    No gradient: these are targets, not part of the graph.
    """
    mask = mask.bool()
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])  # [B]
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        step = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = torch.where(step, delta + gamma * lam * running, running)
        next_value = torch.where(step, values[:, t], next_value)
        advantages[:, t] = torch.where(step, running, 0.0)
    return advantages, torch.where(mask, advantages + values, 0.0)


LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def aggregate(
    x: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean", max_len: int | None = None
) -> torch.Tensor:
    """Per-token losses [B, T] -> the batch's loss, by the aggregation modes verl names:

    token-mean: every token weighs the same, so a long answer counts for more (DAPO, Yu et al. 2025, eq. 12);
    seq-mean-token-mean: every answer weighs the same, its tokens averaged (GRPO as Shao et al. 2024 write it, eq. 3);
    seq-mean-token-sum: every answer's tokens summed, the answers averaged;
    seq-mean-token-sum-norm: the token sums over one constant, max_len per answer (Dr. GRPO, Liu et al. 2025, sec. 3.1):
    neither the answer's length nor the batch's longest changes a token's weight.
    Answers without tokens count in none of them.
    """
    m = mask.bool()
    sums = torch.where(m, x, 0.0).sum(dim=1)
    lengths = m.sum(dim=1)
    answers = (lengths > 0).sum().clamp(min=1)
    if mode == "token-mean":
        return sums.sum() / lengths.sum().clamp(min=1)
    if mode == "seq-mean-token-mean":
        return (sums / lengths.clamp(min=1)).sum() / answers
    if mode == "seq-mean-token-sum":
        return sums.sum() / answers
    if mode == "seq-mean-token-sum-norm":
        if not max_len:
            raise ValueError("seq-mean-token-sum-norm divides by a constant length: give max_len")
        return sums.sum() / (answers * max_len)
    raise ValueError(f"unknown loss aggregation {mode!r}; one of {', '.join(LOSS_AGGREGATIONS)}")


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    clip_eps_high: float | None = None,
    aggregation: str = "token-mean",
    max_len: int | None = None,
    sequence_ratio: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), negated to minimise, aggregated over tokens (aggregate).

    max(-A r, -A clip(r, 1-eps, 1+eps_high)) with r = pi / pi_old: once r has moved past the clip range in
    the direction A favours, the clipped term wins and the token's gradient is 0. clip_eps_high (DAPO's
    clip-higher, Yu et al. 2025, sec. 3.1; default clip_eps) lets unlikely tokens gain more probability before
    clipping, which keeps the policy's entropy from collapsing. sequence_ratio (GSPO, Zheng et al. 2025): one ratio
    per answer, exp of its tokens' mean log-ratio, clipped as a whole; each token carries its answer's ratio with
    its own log-prob's gradient (GSPO-token, eq. 13: with one advantage per answer, the gradient of GSPO's).
    Stats (detached): clip_fraction, approx_kl (k3, (r - 1) - log r, unbiased and >= 0; Schulman 2020) and
    ratio_mean.
    """
    log_ratio = logprobs - old_logprobs
    if sequence_ratio:
        per_answer = masked_mean(log_ratio, mask, dim=1).detach()[:, None]
        log_ratio = per_answer + logprobs - logprobs.detach()
    ratio = torch.exp(log_ratio)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    loss = aggregate(torch.max(unclipped, clipped), mask, aggregation, max_len)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean((ratio - 1) - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The critic's clipped squared error (as in OpenAI's baselines PPO2), and the fraction clipped.

    The new value may move at most clip_eps from the one seen at rollout; taking the larger of the
    clipped and unclipped errors means clipping can only weaken an update, never strengthen it.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_error, clipped_error), mask)
    clip_fraction = masked_mean((clipped_error > unclipped_error).float(), mask).detach()
    return loss, clip_fraction


# Per-token estimators of KL(pi || ref) from log-probs of tokens sampled from pi (Schulman 2020,
# "Approximating KL divergence"): k1 is unbiased but often negative, k2 is low-variance and biased,
# k3 is unbiased and never negative.
KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": lambda logp, ref: logp - ref,
    "abs": lambda logp, ref: (logp - ref).abs(),
    "k2": lambda logp, ref: 0.5 * (logp - ref) ** 2,
    "k3": lambda logp, ref: (ref - logp).exp() - 1 - (ref - logp),
}


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token KL estimate between the policy and the reference, by estimator name [B, T]."""
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; choose one of {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[kind](logprobs, ref_logprobs)


def token_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards [B, T]: -kl_coef * kl on each response token, plus score [B] on the last one.

    The reward model judges whole responses, so its score arrives with the final action; the KL term
    keeps every token near the reference (Ziegler et al. 2019, eq. 2; TRL's PPOTrainer).
    """
    mask = mask.bool()
    if not mask.any(dim=1).all():
        raise ValueError("every row needs at least one response token (mask is all 0 in some row)")
    rewards = torch.where(mask, -kl_coef * kl, 0.0)
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask, positions, -1).argmax(dim=1)  # [B] index of each row's last response token
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last] += score.to(rewards.dtype)
    return rewards


class FixedKLController:
    """A constant KL coefficient; update is a no-op so it can stand in for the adaptive one."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class AdaptiveKLController:
    """Ziegler et al. 2019 (sec. 2.2): steer the KL coefficient so the observed KL tracks `target`.

    A proportional controller: error = clip(KL / target - 1, -0.2, 0.2), coef *= 1 + error * n / horizon.
    The clip bounds how fast the coefficient moves after one odd batch.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got target={target}, horizon={horizon}")
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


class RunningMoments:
    """Mean and unbiased std of every value seen so far, merged a batch at a time.

    Chan et al.'s parallel update of (count, mean, sum of squared deviations), in float64 on the host,
    so neither a long run nor the order of batches loses precision.
    """

    def __init__(self, count: int = 0, mean: float = 0.0, m2: float = 0.0) -> None:
        """A fresh start, or the state (count, mean, m2) of earlier moments (from a checkpoint)."""
        self.count, self.mean, self.m2 = count, mean, m2

    @property
    def state(self) -> tuple[int, float, float]:
        return self.count, self.mean, self.m2

    @property
    def std(self) -> float:
        """Unbiased (n - 1) std; 1.0 before there are two values, so scaling by it is a no-op."""
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def update(self, xs: torch.Tensor) -> None:
        xs = xs.detach().double().flatten()
        n = xs.numel()
        if n == 0:
            return
        batch_mean = float(xs.mean())
        batch_m2 = float(((xs - batch_mean) ** 2).sum())
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.count = total


def normalize_rewards(
    scores: torch.Tensor, moments: RunningMoments, clip: float | None = None, shift_mean: bool = True
) -> torch.Tensor:
    """Scores scaled by the running std (and centred on the running mean), then clipped to +-clip.

    Reward models' scores drift in scale over training; normalising them keeps the KL coefficient
    and the value head's targets meaningful (TRL's use_score_scaling / use_score_norm / score_clip).
    The moments are updated with this batch first.
    """
    moments.update(scores)
    shifted = scores - moments.mean if shift_mean else scores
    out = shifted / (moments.std + 1e-8)
    return out.clamp(-clip, clip) if clip is not None else out


def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B] -> [B / group_size, group_size]: consecutive rows are the samples of one prompt."""
    if group_size < 2:
        raise ValueError(
            f"group_size must be >= 2 (samples per prompt), got {group_size}: "
            "a lone sample has no group to be compared with"
        )
    if scores.shape[0] % group_size:
        raise ValueError(f"{scores.shape[0]} scores do not split into groups of {group_size}")
    return scores.view(-1, group_size)


def group_advantages(
    scores: torch.Tensor, group_size: int, normalize_std: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO (Shao et al. 2024, sec. 4.1.2): each score minus its group's mean, over the group's std [B].

    normalize_std=False keeps the mean-centred score only (Dr. GRPO, Liu et al. 2025), which avoids
    weighting prompts the model finds too easy or too hard more heavily.
    """
    groups = _groups(scores, group_size)
    advantages = groups - groups.mean(dim=1, keepdim=True)
    if normalize_std:
        advantages = advantages / (groups.std(dim=1, keepdim=True) + eps)
    return advantages.flatten()


def informative_groups(scores: torch.Tensor, group_size: int, tolerance: float = 1e-6) -> torch.Tensor:
    """DAPO's dynamic-sampling test (Yu et al. 2025, sec. 3.2), a bool per group: true where its responses' scores
    differ. A group scored all alike (every answer right, or every one wrong) has zero advantage under a group
    baseline and teaches nothing; DAPO drops it and samples more prompts in its place."""
    groups = _groups(scores, group_size)
    return (groups.max(dim=1).values - groups.min(dim=1).values) > tolerance


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): each score minus the mean of the rest of its group [B].

    Leaving the sample out of its own baseline keeps the gradient estimate unbiased.
    """
    groups = _groups(scores, group_size)
    others_mean = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others_mean).flatten()


def reinforce_pp_advantages(scores: torch.Tensor, mask: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """REINFORCE++ (Hu et al. 2025): every token's advantage is its answer's return (the score: gamma 1, the KL to the
    reference kept in the loss, as the method's later versions do, not in the reward), normalised over all the
    batch's tokens rather than within a prompt's group, whose few answers make a poor baseline [B, T].

    With group_size (REINFORCE++-baseline): the group's mean score is subtracted first, so a prompt's easiness
    does not move its answers' advantages.
    """
    if group_size is not None:
        groups = _groups(scores, group_size)
        scores = (groups - groups.mean(dim=1, keepdim=True)).flatten()
    return masked_whiten(torch.where(mask.bool(), scores[:, None], 0.0), mask)


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to the scores [B]: 0 for an answer of up to
    max_len - buffer tokens, then falling linearly to -1 at max_len (an answer cut there)."""
    if not 0 < buffer <= max_len:
        raise ValueError(f"the overlong buffer must be within 1..{max_len} (max_new_tokens), got {buffer}")
    return ((max_len - buffer - lengths.float()) / buffer).clamp(min=-1.0, max=0.0)
