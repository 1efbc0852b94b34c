"""PPO and GRPO arithmetic against hand-computed numbers and plain reference loops."""

import pytest
import torch

from rayft_core.train import rl


def _right_padded_mask(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()  # [B, T]


def _reference_gae(rewards, values, lengths, gamma, lam):
    """The textbook loop, one row and one step at a time, over each row's real tokens only."""
    advantages = torch.zeros_like(rewards)
    for b, n in enumerate(lengths):
        running = 0.0
        for t in reversed(range(n)):
            next_value = values[b, t + 1].item() if t + 1 < n else 0.0
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            running = delta + gamma * lam * running
            advantages[b, t] = running
    return advantages


def test_masked_whiten_has_zero_mean_and_unit_std_over_the_mask():
    torch.manual_seed(0)
    x = torch.randn(4, 9) * 5 + 3
    mask = _right_padded_mask([9, 5, 2, 7], 9)
    white = rl.masked_whiten(x, mask)
    kept = white[mask.bool()]
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert kept.std().item() == pytest.approx(1.0, abs=1e-5)  # unbiased, as torch.std
    assert (white[~mask.bool()] == 0).all()
    assert rl.masked_mean(x, mask).item() == pytest.approx(x[mask.bool()].mean().item(), rel=1e-6)
    unshifted = rl.masked_whiten(x, mask, shift_mean=False)[mask.bool()]
    assert unshifted.mean().item() == pytest.approx(x[mask.bool()].mean().item(), rel=1e-5)


def test_masked_mean_ignores_inf_on_padding_and_reduces_over_a_dim():
    x = torch.tensor([[1.0, 3.0, float("-inf")], [2.0, float("-inf"), float("-inf")]])
    mask = _right_padded_mask([2, 1], 3)
    assert rl.masked_mean(x, mask).item() == pytest.approx(2.0)
    assert rl.masked_mean(x, mask, dim=1).tolist() == [2.0, 2.0]


def test_gae_three_tokens_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 1.0, 1.5]])
    mask = torch.ones(1, 3)
    advantages, returns = rl.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert returns.tolist() == [[3.0, 2.0, 2.0]]  # reward-to-go
    assert advantages.tolist() == [[2.5, 1.0, 0.5]]
    # gamma 0.5, lam 0.5: deltas 1 + 0.5 * 1 - 0.5 = 1.0, 0 + 0.5 * 1.5 - 1 = -0.25, 2 - 1.5 = 0.5;
    # A2 = 0.5, A1 = -0.25 + 0.25 * 0.5 = -0.125, A0 = 1.0 + 0.25 * -0.125 = 0.96875
    advantages, _ = rl.gae(rewards, values, mask, gamma=0.5, lam=0.5)
    assert advantages.tolist() == [[0.96875, -0.125, 0.5]]


def test_gae_matches_a_reference_loop_with_rows_of_different_lengths():
    torch.manual_seed(1)
    lengths = [7, 3, 1, 5]
    rewards, values = torch.randn(4, 7), torch.randn(4, 7)
    mask = _right_padded_mask(lengths, 7)
    advantages, returns = rl.gae(rewards, values, mask, gamma=0.99, lam=0.95)
    want = _reference_gae(rewards, values, lengths, 0.99, 0.95)
    torch.testing.assert_close(advantages, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(returns, (want + values) * mask, rtol=1e-5, atol=1e-6)


def test_gae_steps_over_tool_results_as_if_the_models_turns_were_one_sequence():
    # a trajectory: the model's turn (3 tokens), a tool's result (2, not the model's), its next turn (2), padding (1)
    mask = torch.tensor([[1, 1, 1, 0, 0, 1, 1, 0]])
    torch.manual_seed(3)
    rewards, values = torch.randn(1, 8), torch.randn(1, 8)
    advantages, returns = rl.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    model = mask[0].bool()
    alone, alone_returns = rl.gae(rewards[:, model], values[:, model], torch.ones(1, 5), gamma=0.9, lam=0.8)
    torch.testing.assert_close(advantages[:, model], alone)  # the turn's last token bootstraps from the next turn's
    torch.testing.assert_close(returns[:, model], alone_returns)
    assert advantages[0, ~model].tolist() == [0.0] * 3 and returns[0, ~model].tolist() == [0.0] * 3


def test_first_minibatch_ratio_is_one_and_loss_is_minus_mean_advantage():
    torch.manual_seed(2)
    logprobs = -torch.rand(3, 6)
    advantages = torch.randn(3, 6)
    mask = _right_padded_mask([6, 4, 2], 6)
    loss, stats = rl.policy_loss(logprobs, logprobs.clone(), advantages, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(-advantages[mask.bool()].mean().item(), rel=1e-6)
    assert stats["ratio_mean"].item() == 1.0
    assert stats["clip_fraction"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0


def test_clipping_zeroes_the_gradient_outside_the_trust_region():
    old = torch.zeros(1, 4)
    # ratios 1.5 (A>0: clipped), 1.1 (A>0: inside), 0.5 (A<0: clipped), 1.5 (A<0: not clipped, the loss grows)
    logprobs = torch.log(torch.tensor([[1.5, 1.1, 0.5, 1.5]])).requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, stats = rl.policy_loss(logprobs, old, advantages, torch.ones(1, 4), clip_eps=0.2)
    loss.backward()
    grad = logprobs.grad[0]
    assert grad[0] == 0 and grad[2] == 0
    assert grad[1] != 0 and grad[3] != 0
    assert stats["clip_fraction"].item() == pytest.approx(0.5)
    assert stats["approx_kl"].item() > 0


def test_value_loss_clips_around_the_old_values():
    old = torch.tensor([[0.0, 0.0]])
    values = torch.tensor([[1.0, 0.1]], requires_grad=True)
    returns = torch.tensor([[0.0, 1.0]])
    loss, clip_fraction = rl.value_loss(values, old, returns, torch.ones(1, 2), clip_eps=0.2)
    # token 0: unclipped (1-0)^2 = 1 > clipped (0.2-0)^2; token 1: clipped (0.1-1)^2 = 0.81 = unclipped
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.81) / 2)
    assert clip_fraction.item() == 0.0
    values = torch.tensor([[0.5, -0.5]], requires_grad=True)
    returns = torch.tensor([[1.0, 1.0]])
    loss, clip_fraction = rl.value_loss(values, old, returns, torch.ones(1, 2), clip_eps=0.2)
    # token 1 moved away from a target the clipped value (-0.2) was nearer; token 0 is clipped at 0.2
    assert loss.item() == pytest.approx(0.5 * ((0.2 - 1) ** 2 + (-0.5 - 1) ** 2) / 2)
    assert clip_fraction.item() == 0.5
    loss.backward()
    assert values.grad[0, 0] == 0 and values.grad[0, 1] != 0


@pytest.mark.parametrize("kind", ["k1", "k2", "k3", "abs"])
def test_kl_estimators_vanish_at_the_reference(kind):
    logp = -torch.rand(2, 5) * 3
    assert (rl.kl_penalty(logp, logp.clone(), kind) == 0).all()


def test_k3_is_never_negative_and_unknown_kinds_are_refused():
    torch.manual_seed(3)
    logp, ref = torch.randn(64, 32) * 4, torch.randn(64, 32) * 4
    assert (rl.kl_penalty(logp, ref, "k3") >= 0).all()
    assert rl.kl_penalty(torch.tensor([0.0]), torch.tensor([1.0]), "k2").item() == 0.5
    with pytest.raises(ValueError, match="k3"):
        rl.kl_penalty(logp, ref, "k4")


def test_token_rewards_put_the_score_on_each_rows_last_token():
    mask = _right_padded_mask([4, 1, 3], 4)
    kl = torch.full((3, 4), 0.5)
    score = torch.tensor([10.0, 20.0, 30.0])
    rewards = rl.token_rewards(score, kl, mask, kl_coef=0.1)
    want = torch.tensor([[-0.05, -0.05, -0.05, 9.95], [19.95, 0.0, 0.0, 0.0], [-0.05, -0.05, 29.95, 0.0]])
    torch.testing.assert_close(rewards, want)
    with pytest.raises(ValueError, match="at least one response token"):
        rl.token_rewards(score, kl, _right_padded_mask([4, 0, 3], 4), kl_coef=0.1)


def test_adaptive_kl_controller_follows_the_target():
    ctl = rl.AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    assert ctl.update(current_kl=12.0, n_steps=256) > 0.2
    ctl = rl.AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    assert ctl.update(current_kl=1.0, n_steps=256) < 0.2
    ctl = rl.AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    assert ctl.update(current_kl=600.0, n_steps=100) == pytest.approx(0.2 * (1 + 0.2 * 100 / 10_000))  # error clipped
    fixed = rl.FixedKLController(0.05)
    assert fixed.update(100.0, 256) == 0.05


def test_running_moments_equal_the_moments_of_all_batches():
    torch.manual_seed(4)
    batches = [torch.randn(n) * 3 + 7 for n in (5, 1, 17, 8)]
    moments = rl.RunningMoments()
    assert moments.std == 1.0
    for b in batches:
        moments.update(b)
    everything = torch.cat(batches).double()
    assert moments.count == everything.numel()
    assert moments.mean == pytest.approx(everything.mean().item(), rel=1e-12)
    assert moments.std == pytest.approx(everything.std().item(), rel=1e-12)


def test_normalize_rewards_centres_scales_and_clips():
    scores = torch.tensor([1.0, 2.0, 3.0, 100.0])
    moments = rl.RunningMoments()
    out = rl.normalize_rewards(scores, moments, clip=1.0)
    everything = scores.double()
    want = ((everything - everything.mean()) / everything.std()).clamp(-1, 1).float()
    torch.testing.assert_close(out, want)
    scaled = rl.normalize_rewards(scores, rl.RunningMoments(), shift_mean=False)
    torch.testing.assert_close(scaled, scores / scores.std())


def test_group_advantages_sum_to_zero_per_group():
    torch.manual_seed(5)
    scores = torch.randn(12)
    advantages = rl.group_advantages(scores, group_size=4)
    groups = scores.view(3, 4)
    torch.testing.assert_close(advantages.view(3, 4).sum(dim=1), torch.zeros(3), atol=1e-5, rtol=0)
    want = (groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)
    torch.testing.assert_close(advantages, want.flatten())
    centred = rl.group_advantages(scores, group_size=4, normalize_std=False)
    torch.testing.assert_close(centred, (groups - groups.mean(1, keepdim=True)).flatten())
    # a group of equal scores teaches nothing: advantage 0, not nan
    assert (rl.group_advantages(torch.ones(4), group_size=2) == 0).all()


def test_rloo_matches_a_direct_leave_one_out():
    scores = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    advantages = rl.rloo_advantages(scores, group_size=3)
    want = []
    for g in range(2):
        group = scores[3 * g : 3 * g + 3].tolist()
        for i, s in enumerate(group):
            others = group[:i] + group[i + 1 :]
            want.append(s - sum(others) / len(others))
    torch.testing.assert_close(advantages, torch.tensor(want))
    torch.testing.assert_close(advantages.view(2, 3).sum(dim=1), torch.zeros(2))


@pytest.mark.parametrize("fn", [rl.group_advantages, rl.rloo_advantages])
def test_group_size_one_and_ragged_groups_are_refused(fn):
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        fn(torch.randn(4), group_size=1)
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        fn(torch.randn(4), group_size=3)


def test_loss_aggregations_by_hand():
    """Two answers, of 1 and 3 tokens, token losses [2] and [1, 1, 4] (padding holds a value that must not count)."""
    x = torch.tensor([[2.0, 9.0, 9.0], [1.0, 1.0, 4.0]])
    mask = _right_padded_mask([1, 3], 3)
    assert rl.aggregate(x, mask, "token-mean").item() == pytest.approx((2 + 1 + 1 + 4) / 4)  # 2.0
    assert rl.aggregate(x, mask, "seq-mean-token-mean").item() == pytest.approx((2 / 1 + 6 / 3) / 2)  # 2.0
    assert rl.aggregate(x, mask, "seq-mean-token-sum").item() == pytest.approx((2 + 6) / 2)  # 4.0
    assert rl.aggregate(x, mask, "seq-mean-token-sum-norm", max_len=8).item() == pytest.approx((2 + 6) / (2 * 8))
    empty = _right_padded_mask([1, 0], 3)  # an answer without tokens counts in none of them
    assert rl.aggregate(x, empty, "seq-mean-token-mean").item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="give max_len"):
        rl.aggregate(x, mask, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="unknown loss aggregation 'sum'"):
        rl.aggregate(x, mask, "sum")


def test_clip_higher_lets_a_rising_token_keep_its_gradient():
    """Ratio 1.25 with a positive advantage: clipped (gradient 0) at clip_eps 0.2, not at DAPO's clip_eps_high 0.28;
    the lower bound stays 1 - clip_eps (ratio 0.75 with a negative advantage is clipped either way)."""
    old = torch.zeros(1, 2)
    for high, first_grad in ((None, 0.0), (0.28, -0.5 * 1.25)):
        logprobs = torch.log(torch.tensor([[1.25, 0.75]])).requires_grad_()
        loss, stats = rl.policy_loss(logprobs, old, torch.tensor([[1.0, -1.0]]), torch.ones(1, 2), 0.2, high)
        loss.backward()
        # d/dlogp of -A r / 2 tokens = -A r / 2
        assert logprobs.grad[0, 0].item() == pytest.approx(first_grad) and logprobs.grad[0, 1].item() == 0.0
        assert stats["clip_fraction"].item() == pytest.approx(1.0 if high is None else 0.5)


def test_sequence_ratio_is_the_answers_geometric_mean_ratio_with_its_gradient():
    """GSPO: every token carries exp(mean log-ratio of its answer); with one advantage per answer and each answer's
    tokens averaged, the gradient equals that of -A * s_i written out directly (Zheng et al. 2025, eq. 11)."""
    torch.manual_seed(0)
    old = -torch.rand(2, 4)
    logprobs = (old + 0.01 * torch.randn(2, 4)).requires_grad_()
    mask = _right_padded_mask([4, 2], 4)
    advantages = torch.tensor([[1.0] * 4, [-2.0] * 4])
    loss, stats = rl.policy_loss(
        logprobs, old, advantages, mask, 0.2, aggregation="seq-mean-token-mean", sequence_ratio=True
    )
    loss.backward()
    direct = logprobs.detach().clone().requires_grad_()
    s = torch.exp(torch.stack([(direct[0] - old[0]).mean(), (direct[1, :2] - old[1, :2]).mean()]))
    (-(torch.tensor([1.0, -2.0]) * s).mean()).backward()
    assert loss.item() == pytest.approx(-(torch.tensor([1.0, -2.0]) * s.detach()).mean().item(), rel=1e-6)
    assert torch.allclose(logprobs.grad, direct.grad, atol=1e-7)
    assert stats["ratio_mean"].item() == pytest.approx(((4 * s[0] + 2 * s[1]) / 6).item(), rel=1e-6)
    # out of a tiny clip range, a whole answer is clipped at once
    far = (old + torch.tensor([[0.5] * 4, [0.0] * 4])).requires_grad_()
    loss, stats = rl.policy_loss(far, old, advantages, mask, 3e-4, 4e-4, "seq-mean-token-mean", sequence_ratio=True)
    loss.backward()
    assert (far.grad[0] == 0).all() and stats["clip_fraction"].item() == pytest.approx(4 / 6)


def test_reinforce_pp_normalises_over_the_batch_and_its_baseline_over_the_group():
    """Scores [1, 0, 3, 3] on answers of 1, 2, 1, 1 tokens: each token takes its answer's score, then the batch's
    5 tokens are whitened (mean 1.6, unbiased std 1.3416). The baseline variant takes the group means out first
    (groups of 2: [0.5, -0.5, 0, 0]), then whitens the same way."""
    scores = torch.tensor([1.0, 0.0, 3.0, 3.0])
    mask = _right_padded_mask([1, 2, 1, 1], 2).bool()
    tokens = torch.tensor([1.0, 0.0, 0.0, 3.0, 3.0])
    expected = (tokens - tokens.mean()) / tokens.std()
    assert torch.allclose(rl.reinforce_pp_advantages(scores, mask)[mask], expected, atol=1e-5)
    centred = torch.tensor([0.5, -0.5, -0.5, 0.0, 0.0])
    expected = (centred - centred.mean()) / centred.std()
    assert torch.allclose(rl.reinforce_pp_advantages(scores, mask, 2)[mask], expected, atol=1e-5)
    assert (rl.reinforce_pp_advantages(scores, mask)[~mask] == 0).all()


def test_overlong_penalty_by_hand():
    lengths = torch.tensor([10, 16, 17, 19, 20])
    assert rl.overlong_penalty(lengths, max_len=20, buffer=4).tolist() == pytest.approx([0, 0, -0.25, -0.75, -1])
    with pytest.raises(ValueError, match="within 1..20"):
        rl.overlong_penalty(lengths, 20, 21)
