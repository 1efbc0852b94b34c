"""`rayft eval mc` and `rayft eval similarity` through the real command line (no Ray cluster needed):
table and JSON on the shipped examples, exit status 2 with file and line on bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rayft.cli import main
from tests.core.test_eval import EXAMPLES, build_forced_model


@pytest.fixture(scope="module")
def forced_b(tokenizer, tmp_path_factory):
    return build_forced_model(tokenizer, tmp_path_factory.mktemp("eval-cli") / "forced-b")


def test_mc_prints_a_table_and_writes_json(forced_b, tmp_path):
    out = tmp_path / "results" / "mmlu.json"
    result = CliRunner().invoke(
        main,
        [
            "eval",
            "mc",
            "--model",
            str(forced_b),
            "--task-dir",
            str(EXAMPLES / "mmlu"),
            "--n-shot",
            "1",
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["subject", "questions", "correct", "accuracy", "%"]
    assert "astronomy 5 2 40.00" in [" ".join(line.split()) for line in lines]
    assert "overall 10 4 40.00" in [" ".join(line.split()) for line in lines]
    saved = json.loads(out.read_text())
    assert saved["overall"] == {"questions": 10, "correct": 4, "accuracy": 0.4}
    assert saved["categories"]["STEM"]["accuracy"] == 0.4 and saved["n_shot"] == 1
    assert saved["subjects"]["high_school_geography"]["predictions"] == "BBBBB"

    one = CliRunner().invoke(
        main,
        [
            "eval",
            "mc",
            "--model",
            str(forced_b),
            "--task-dir",
            str(EXAMPLES / "ceval"),
            "--split",
            "val",
            "--lang",
            "zh",
            "--subjects",
            "high_school_geography",
            "--n-shot",
            "0",
        ],
    )
    assert one.exit_code == 0, one.output
    assert "overall 4 1 25.00" in [" ".join(line.split()) for line in one.stdout.splitlines()]


def test_mc_bad_input_exits_2_naming_the_file(forced_b, tmp_path):
    ceval = CliRunner().invoke(main, ["eval", "mc", "--model", str(forced_b), "--task-dir", str(EXAMPLES / "ceval")])
    assert ceval.exit_code == 2
    assert (
        "high_school_geography_test.csv: missing column answer (C-Eval's test split ships without answers: "
        "evaluate --split val)" in ceval.output
    )
    (tmp_path / "data" / "test").mkdir(parents=True)
    (tmp_path / "data" / "test" / "logic_test.csv").write_text("q1,a,b,c,d,A\nq2,a,b,c,d,F\n")
    bad = CliRunner().invoke(main, ["eval", "mc", "--model", str(forced_b), "--task-dir", str(tmp_path)])
    assert bad.exit_code == 2
    assert f"error: {tmp_path}/data/test/logic_test.csv line 2: answer 'F' is not one of A, B, C, D" in bad.output
    no_model = CliRunner().invoke(main, ["eval", "mc", "--model", str(tmp_path), "--task-dir", str(EXAMPLES / "mmlu")])
    assert no_model.exit_code == 2 and "no config.json or adapter_config.json" in no_model.output


def test_similarity_table_and_json(tmp_path):
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(main, ["eval", "similarity", str(EXAMPLES / "predictions.jsonl"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["rows"] == 6 and set(saved) == {"predictions", "rows", "rouge-1", "rouge-2", "rouge-l", "bleu-4"}
    for metric in ("rouge-1", "rouge-2", "rouge-l", "bleu-4"):
        assert f"{metric} {saved[metric]:.2f}" in [" ".join(line.split()) for line in result.stdout.splitlines()]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "predictions.jsonl: no rows"),
        (
            '{"prediction": "a", "reference": "a"}\n{"prediction": "b"}\n',
            "predictions.jsonl line 2: no 'reference' field",
        ),
    ],
)
def test_similarity_bad_input_exits_2(tmp_path, text, message):
    path = tmp_path / "predictions.jsonl"
    path.write_text(text)
    result = CliRunner().invoke(main, ["eval", "similarity", str(path)])
    assert result.exit_code == 2
    assert message in result.output
