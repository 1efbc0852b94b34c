"""`rayft demo --model`: the real-model demo's whole path (data, LoRA SFT on one worker, merge, answers before and
after) on a tiny model. Whether a real instruct model learns its new name is measured by hand (README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_demo_with_a_model_trains_merges_and_answers_the_unseen_questions(tiny_model, tmp_path, capsys):
    from rayft.demo import IDENTITY_HELD_OUT, IDENTITY_TRAIN, run_model_demo

    run_model_demo(str(tmp_path / "demo"), str(tiny_model("llama")))
    out = Path(tmp_path / "demo")
    rows = [json.loads(line) for line in (out / "data" / "identity_train.jsonl").read_text().splitlines()]
    assert [r["instruction"] for r in rows] == IDENTITY_TRAIN
    summary = json.loads((out / "identity-lora" / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["epoch"]["rows"] == len(IDENTITY_TRAIN)
    assert (out / "identity-lora" / "merged" / "config.json").is_file()
    printed = capsys.readouterr().out
    assert f"{len(IDENTITY_HELD_OUT)} questions it never saw" in printed
    assert printed.count("  before: ") == 3 and printed.count("  after : ") == 3
