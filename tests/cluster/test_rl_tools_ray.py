"""Tool-using, multi-turn GRPO and PPO on the session's Ray cluster: 2 learner workers and a rollout engine.

A random tiny model never writes a tool call, so the base here is taught one first (a few hundred plain PyTorch
steps in the fixture, not rayft): asked "What is a plus b?" with the python tool listed, it calls the tool twice,
then answers. The run then shows trajectories with two executed calls per answer, their results in the text the
reward reads, and the learners training on them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayft_core.train.outputs import read_metrics
from tests.helpers import run_config

pytestmark = pytest.mark.usefixtures("ray_cluster")

PAIRS = [(a, b) for a in range(4) for b in range(4)]
SCRIPT = [  # the taught trajectory: two calls, then the answer (the results come from the sandbox)
    '<tool_call>\n{"name": "python", "arguments": {"code": "print(2 + 3)"}}\n</tool_call>',
    '<tool_call>\n{"name": "python", "arguments": {"code": "print(5 * 1)"}}\n</tool_call>',
    "The answer is 5.",
]
REWARDS = '''
def saw_results(completions):
    """How many tool results the trajectory holds: the reward reads the whole trajectory."""
    return [float(c.count("</tool_response>")) for c in completions]
'''


def _teach(base: Path, tokenizer, prompts: list[list[int]], turns: list[list[int]], results: list[list[int]]) -> None:
    """Full fine-tuning until the base follows SCRIPT from every prompt (loss on its turns only)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    rows = []
    for prompt in prompts:
        ids, labels = list(prompt), [-100] * len(prompt)
        for i, turn in enumerate(turns):
            ids, labels = ids + turn, labels + turn
            if i < len(results):
                ids, labels = ids + results[i], labels + [-100] * len(results[i])
        rows.append((ids, labels))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(ids) for ids, _ in rows])[:, None]).long()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.01:
            break
    assert loss.item() < 0.05, f"the base did not learn the tool calls (loss {loss.item():.3f})"
    model.save_pretrained(base)


@pytest.fixture(scope="module")
def agent_task(workdir: Path) -> dict:
    from rayft_core.data.templates import TEMPLATES
    from rayft_core.data.tokenize import render
    from rayft_core.model.tiny import build_tiny_model, build_tokenizer
    from rayft_core.rl_stage_config import Tool
    from rayft_core.train.agent import Agent, Call, Tools

    tools = Tools([Tool(function="python")])
    conversations = [[{"role": "user", "content": f"What is {a} plus {b}?"}] for a, b in PAIRS]
    # a tokenizer trained on the very text it will see, so the qwen prompts with their tool list stay short
    probe = build_tokenizer(["x"], vocab_size=300)
    probe.chat_template = TEMPLATES["qwen"]
    texts = [
        render(probe, c + [{"role": "assistant", "content": s}], tools.descriptions, False)
        for c in conversations
        for s in SCRIPT
    ]
    tokenizer = build_tokenizer(texts * 8 + ["5\n"] * 8, vocab_size=600)
    tokenizer.chat_template = TEMPLATES["qwen"]
    tokenizer.save_pretrained(workdir / "agent-tokenizer")
    base = build_tiny_model(
        "llama", tokenizer, workdir / "agent-base", hidden_size=128, num_attention_heads=2, num_key_value_heads=1
    )
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    agent = Agent(tokenizer, tools, (end,), max_turns=3, max_len=10_000)
    prompts = [tokenizer(render(tokenizer, c, tools.descriptions, True))["input_ids"] for c in conversations]
    turns = [tokenizer(s, add_special_tokens=False)["input_ids"] + [end] for s in SCRIPT]
    results = [agent.observation_ids([Call("python", {"code": "..."})], ["5\n"], end) for _ in SCRIPT[:2]]
    _teach(base, tokenizer, prompts, turns, results)

    data = workdir / "agent-questions.jsonl"
    data.write_text("".join(json.dumps({"instruction": c[0]["content"]}) + "\n" for c in conversations))
    rewards = workdir / "agent_rewards.py"
    rewards.write_text(REWARDS)
    model_tokens = sum(map(len, turns))
    return {
        "base": base,
        "data": data,
        "rewards": rewards,
        "model_tokens": model_tokens,
        "result_tokens": sum(map(len, results)),
    }


# PPO: the critic's GAE steps over the tool results (rl.gae), from each turn's last token to the next turn's first
STAGES = {"grpo": {"group_size": 4, "rollout": {"engine": "vllm"}}, "ppo": {"rollout": {"engine": "hf"}}}


@pytest.mark.parametrize("stage", STAGES)
def test_tool_using_policies_run_two_calls_per_answer(stage: str, agent_task: dict, workdir: Path) -> None:
    from rayft.train import train

    run = run_config(
        agent_task["base"],
        [{"path": str(agent_task["data"]), "format": "alpaca"}],
        workdir / "agent-runs",
        f"{stage}-tools",
        model={"template": "qwen"},
        data={"max_seq_len": 512},
        tuning={"method": "lora", "rank": 8, "dropout": 0.0},
        stage={
            "name": stage,
            **STAGES[stage],
            "kl_coef": 0.0,
            "max_new_tokens": 48,
            "temperature": 0.7,
            "tools": [{"function": "python"}],
            "max_turns": 3,
            "reward_functions": [{"function": f"{agent_task['rewards']}:saw_results"}],
        },
        train={"max_steps": 2, "micro_batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1},
        cluster={"num_workers": 2},
    )
    rows = read_metrics(Path(train(run)))
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        # the taught trajectory: two calls, each run in the sandbox, then the answer (a few samples may stray)
        assert r["rl/tool_calls"] >= 1.5 and r["rl/turns"] >= 2.5, r
        # the reward read each result in the trajectory
        assert r["rl/reward/saw_results"] == pytest.approx(r["rl/tool_calls"]), r
        # the model's tokens alone are its response (trained on): its turns, not the results between them
        model, results = agent_task["model_tokens"], agent_task["result_tokens"]
        assert abs(r["rl/response_length"] - model) < results / 2, (r, model, results)
