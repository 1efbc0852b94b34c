"""The preference stages on a real local Ray cluster: 2 workers under ZeRO-2 and ZeRO-3, adapters,
full parameters and QLoRA. Each run must learn to prefer the chosen answers, and DPO must start at
its invariant: policy = reference, loss ln 2, margins 0."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rayft.checks import RunCheckError
from rayft_core.data.formats import DataError
from rayft_core.train.outputs import read_metrics
from tests.helpers import QA, run_config

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _dataset(stage: str, pairs_file: Path, feedback_file: Path) -> dict:
    if stage == "kto":
        return {"path": str(feedback_file), "format": "openai", "columns": {"messages": "messages", "kto_tag": "label"}}
    return {"path": str(pairs_file), "format": "sharegpt", "ranking": True}


# (stage, ZeRO stage, tuning method): each way a reference is built once per stage that has one: the base with
# adapters off (dpo under ZeRO-2 on a QLoRA base, kto under ZeRO-3) and a frozen full copy, sharded under ZeRO-3
# (dpo); the stages without one, which share the pair batching and differ only in the loss, once each; the value
# head on full weights and on a QLoRA base. Each case is a whole 2-worker run (~25 s on 2 cores), so the grid is
# not crossed fully: LoRA under ZeRO-2 trains in most other cluster tests, full weights under ZeRO-2 here in simpo.
CASES = [
    ("rm", 3, "full"),
    ("rm", 2, "qlora"),
    ("dpo", 3, "full"),
    ("dpo", 2, "qlora"),
    ("kto", 3, "lora"),
    ("orpo", 3, "full"),
    ("simpo", 2, "full"),
]


@pytest.mark.parametrize("stage, zero_stage, method", CASES, ids=[f"{s}-z{z}-{m}" for s, z, m in CASES])
def test_stage_learns_the_preference(tiny_model, workdir, pairs_file, feedback_file, stage, zero_stage, method):
    from rayft.train import train

    steps = 10 if stage == "rm" else 5  # the reward model must reach 100% validation accuracy, from a fresh head
    run = run_config(
        tiny_model("llama"),
        [_dataset(stage, pairs_file, feedback_file)],
        workdir / "pref",
        f"{stage}-z{zero_stage}-{method}",
        stage=stage,
        tuning=method,
        train={"max_steps": steps, "micro_batch_size": 2, "eval_steps": steps},
        data={"val_size": 8},
        deepspeed={"zero_stage": zero_stage},
        cluster={"num_workers": 2},
    )
    out = train(run)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert all(math.isfinite(r["train/loss"]) and math.isfinite(r["train/grad_norm"]) for r in rows)
    first, last = rows[0], rows[-1]
    if stage == "kto":
        assert last["train/rewards/chosen"] - last["train/rewards/rejected"] > 0
        assert first["train/rewards/chosen"] == first["train/rewards/rejected"] == 0  # policy = reference at the start
        assert "train/kl" in last and "eval/loss" in last
        return
    assert last["train/rewards/margins"] > first["train/rewards/margins"], [r["train/rewards/margins"] for r in rows]
    assert last["train/loss"] < first["train/loss"]
    assert 0 <= last["eval/rewards/accuracies"] <= 1 and "eval/rewards/margins" in last
    if stage == "dpo":  # the invariant at step 0: the policy is its reference
        assert first["train/loss"] == pytest.approx(math.log(2), abs=1e-5)
        assert first["train/rewards/margins"] == 0 and first["train/rewards/accuracies"] == 0
    if stage == "rm":
        assert last["eval/rewards/accuracies"] == 1.0  # separable pairs: every validation pair ranked right
        _check_reward_model(out, pairs_file)


def _check_reward_model(out: Path, pairs_file: Path) -> None:
    """The saved reward model, loaded with plain transformers/PEFT, ranks every pair right."""
    from rayft_core.model.value_head import load_reward_model
    from rayft_core.train.stages import STAGES

    assert (out / "value_head.safetensors").is_file()
    model, tokenizer = load_reward_model(out)
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()][:10]
    aligned = [
        {
            "messages": [{"role": "user", "content": r["conversations"][0]["value"]}],
            "tools": None,
            "chosen": {"role": "assistant", "content": r["chosen"]["value"]},
            "rejected": {"role": "assistant", "content": r["rejected"]["value"]},
        }
        for r in rows
    ]
    run = run_config("m", [{"path": "x.jsonl", "ranking": True}], "out", "x", stage="rm")
    stage = STAGES["rm"]
    batch = stage.collate(stage.encode_rows(aligned, tokenizer, run), tokenizer.pad_token_id)
    with torch.no_grad():
        scores = model.score(batch)
    chosen, rejected = scores[: len(rows)], scores[len(rows) :]
    assert bool((chosen > rejected).all()), (chosen, rejected)


# ----------------------------------------------------------------------------- bad input, refused before training


def test_preference_row_without_rejected_names_file_and_row(tiny_model, workdir, tmp_path):
    from rayft.train import train

    path = tmp_path / "half.jsonl"
    rows = [
        {
            "conversations": [{"from": "human", "value": q}],
            "chosen": {"from": "gpt", "value": a},
            "rejected": {"from": "gpt", "value": "no"},
        }
        for q, a in QA
    ]
    del rows[3]["rejected"]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run = run_config(
        tiny_model("llama"),
        [{"path": str(path), "format": "sharegpt", "ranking": True}],
        workdir / "bad",
        "half-pair",
        stage="dpo",
    )
    with pytest.raises(
        DataError, match=r"half.jsonl: row 4: missing column: preference rows need a 'rejected' assistant turn"
    ):
        train(run)
    assert not Path(run.output.dir).exists()


def test_kto_row_without_boolean_tag_names_file_and_row(tiny_model, workdir, tmp_path):
    from rayft.train import train

    path = tmp_path / "feedback.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "label": True}
        for q, a in QA
    ]
    rows[2]["label"] = "yes"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run = run_config(
        tiny_model("llama"),
        [{"path": str(path), "format": "openai", "columns": {"messages": "messages", "kto_tag": "label"}}],
        workdir / "bad",
        "kto-tag",
        stage="kto",
    )
    with pytest.raises(
        DataError, match=r"feedback.jsonl: row 3: wrong type: KTO column 'label' must be true or false, got 'yes'"
    ):
        train(run)


def test_kto_dataset_without_tag_column_and_pairs_for_sft(tiny_model, workdir, pairs_file, feedback_file):
    from rayft.train import train
    from rayft_core.errors import UserInputError  # found by the checks before Ray starts

    run = run_config(
        tiny_model("llama"),
        [{"path": str(feedback_file), "format": "openai", "columns": {"messages": "messages"}}],
        workdir / "bad",
        "kto-none",
        stage="kto",
    )
    with pytest.raises(
        UserInputError, match=r"data.train\[0\]: stage kto needs a boolean tag per row; set columns.kto_tag"
    ):
        train(run)
    run = run_config(tiny_model("llama"), [_dataset("dpo", pairs_file, feedback_file)], workdir / "bad", "pairs-sft")
    with pytest.raises(UserInputError, match="is a ranking \\(preference\\) dataset; stage sft cannot use it"):
        train(run)


def test_missing_reference_model_is_refused(tiny_model, workdir, pairs_file, feedback_file, tmp_path):
    from rayft.train import train

    run = run_config(
        tiny_model("llama"),
        [_dataset("dpo", pairs_file, feedback_file)],
        workdir / "bad",
        "ref",
        stage={"name": "dpo", "reference_model": str(tmp_path / "nowhere")},
    )
    with pytest.raises(RunCheckError, match=r"stage.reference_model: .*nowhere' has no config.json"):
        train(run)
