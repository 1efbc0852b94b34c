"""The arithmetic task the RL stages' cluster tests share (tests/cluster/test_rlhf_ray.py, test_rl_policies_ray.py):
its reward, the metrics every RL run logs, a run config on it, and what one optimizer step per rollout batch implies.
The task itself (tokenizer, base, prompts) is the session fixture ``rl`` in tests/cluster/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers import run_config

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


def rl_run(
    rl: dict, workdir: Path, name: str, stage: dict, data: str = "prompts", tuning: dict | None = None, **sections
):
    """A run on the task: 8 iterations of 2 learners, 16 answers each, a LoRA policy unless ``tuning`` says."""
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


def first_pass_invariants(rows: list[dict]) -> None:
    """One optimizer step per rollout batch: every response is scored by the very policy that generated it,
    so the ratio is 1 and nothing is clipped."""
    for r in rows:
        assert abs(r["rl/ratio_mean"] - 1) < 1e-5 and r["rl/clip_fraction"] == 0 and abs(r["rl/approx_kl"]) < 1e-6, r
