"""`rayft config validate` checks all that needs no cluster, and `rayft train` checks it before Ray starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rayft.cli import main


def _config(tmp_path: Path, model: Path, **sections) -> Path:
    data = tmp_path / "alpaca.json"
    if not data.exists():
        data.write_text(json.dumps([{"instruction": "q", "input": "", "output": "a"}] * 4))
    raw = {
        "model": {"name_or_path": str(model)},  # the tiny models have 512 positions
        "data": {"train": [{"path": str(data), "format": "alpaca"}], "max_seq_len": 256},
        "output": {"storage_path": str(tmp_path / "runs"), "name": "run"},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _validate(path: Path, *overrides: str):
    result = CliRunner().invoke(main, ["config", "validate", str(path), *overrides])
    assert "Traceback" not in result.output
    return result


def test_a_good_config_is_valid(tmp_path, tiny_model):
    result = _validate(_config(tmp_path, tiny_model("llama")))
    assert result.exit_code == 0 and "valid (sft, lora" in result.output, result.output


@pytest.mark.parametrize(
    "overrides, culprit",
    [
        (["data.train=[{path: /nowhere/x.json, format: alpaca}]"], "data.train[0]: no data files at '/nowhere/x.json'"),
        (["data.train=[{dataset: no_such_set}]", "data.dataset_dir=DATADIR"], "no_such_set"),
        (["stage=kto"], "stage kto needs a boolean tag per row; set columns.kto_tag"),
        (["stage=dpo"], "stage dpo trains on preference pairs"),
        (["data.eval=[{path: /nowhere/e.json, format: alpaca}]"], "data.eval[0]: no data files"),
        (["train.eval_steps=10"], "train.eval_steps: evaluating every 10 steps needs evaluation data"),
        (["data.max_seq_len=100000"], "data.max_seq_len: 100000 is beyond the 512 positions"),
        (["cluster.num_workers=1000000"], "cluster.num_workers: 1,000,000 workers is more than any cluster holds"),
        (["tuning.target=[]"], "tuning.target: an empty list of modules would train nothing"),
        (["tuning.target=[c_attn]"], "tuning.target: ['c_attn'] match no linear module"),
        (["model.name_or_path=/nowhere/model"], "model.name_or_path"),
        (["output.name=.."], "output.name: a run name is a plain directory name inside storage_path"),
    ],
)
def test_each_problem_is_named_before_any_cluster(tmp_path, tiny_model, overrides, culprit):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text("{}")
    overrides = [o.replace("DATADIR", str(tmp_path / "data")) for o in overrides]
    result = _validate(_config(tmp_path, tiny_model("llama")), *overrides)
    assert result.exit_code == 2 and culprit in result.output, result.output


def test_rope_scaling_allows_a_longer_context(tmp_path, tiny_model):
    result = _validate(_config(tmp_path, tiny_model("llama")), "data.max_seq_len=1024", "model.rope_scaling=linear")
    assert result.exit_code == 0, result.output


def test_an_occupied_output_directory_is_named(tmp_path, tiny_model):
    path = _config(tmp_path, tiny_model("llama"))
    run_dir = tmp_path / "runs" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "thesis.tex").write_text("mine")
    for flags in ([], ["output.overwrite=true"]):
        result = _validate(path, *flags)
        assert result.exit_code == 2 and "thesis.tex" in result.output and "never deletes" in result.output
    assert (run_dir / "thesis.tex").read_text() == "mine"
    assert _validate(path, "--schema-only").exit_code == 0  # a config for another machine: its keys only


def test_train_refuses_before_starting_ray(tmp_path, tiny_model):
    """`rayft train` of a config with a missing data file ends in seconds, without a Ray cluster."""
    import ray

    was_up = ray.is_initialized()
    result = CliRunner().invoke(
        main,
        ["train", str(_config(tmp_path, tiny_model("llama"))), "data.train=[{path: /nowhere/x.json, format: alpaca}]"],
    )
    assert result.exit_code == 2 and "no data files at '/nowhere/x.json'" in result.output, result.output
    assert ray.is_initialized() == was_up  # no cluster was started for a run that cannot start


def test_every_directory_writer_refuses_a_folder_of_user_files_before_any_work(tmp_path, tiny_model):
    """train, tune, data prepare and demo, with and without their overwrite flags: a directory holding a
    user's file is refused with the file named, and stays as it was."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    path = _config(tmp_path, tiny_model("llama"), output={"storage_path": str(tmp_path), "name": "mine"})
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        path.read_text() + "tune: {space: {tuning.rank: {choice: [4, 8]}}, num_samples: 2, metric: train/loss}\n"
    )
    commands = [
        ["train", str(path)],
        ["train", str(path), "output.overwrite=true"],
        ["tune", str(sweep)],
        ["tune", str(sweep), "output.overwrite=true"],
        ["data", "prepare", str(path), "-o", str(mine)],
        ["data", "prepare", str(path), "-o", str(mine), "--overwrite"],
        ["demo", "--output", str(mine)],
    ]  # export: tests/core/test_export.py (it needs a trained run)
    for command in commands:
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2 and "thesis.tex" in result.output, (command, result.output)
        assert "Traceback" not in result.output
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"] and (mine / "thesis.tex").read_text() == "mine"
