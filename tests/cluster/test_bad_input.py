"""Bad runs stop on the driver, before any worker starts, with what to change, and write nothing."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml
from click.testing import CliRunner

from rayft.checks import RunCheckError
from rayft.cli import main
from tests.helpers import run_config

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _run(tiny_model, workdir, alpaca_file, name, **sections):
    return run_config(
        tiny_model("llama"), [{"path": str(alpaca_file), "format": "alpaca"}], workdir / "bad", name, **sections
    )


def _refused(run, match: str) -> None:
    from rayft.train import train

    with pytest.raises(RunCheckError, match=match):
        train(run)
    assert not (workdir_of(run)).exists()  # nothing half-written


def workdir_of(run):
    from pathlib import Path

    return Path(run.output.dir)


def test_missing_model_path(tiny_model, workdir, alpaca_file, tmp_path):
    run = run_config(
        tmp_path / "no-such-model", [{"path": str(alpaca_file), "format": "alpaca"}], workdir / "bad", "nomodel"
    )
    _refused(run, r"model.name_or_path: .*no-such-model.* has no config.json")


def test_lora_target_matching_no_module(tiny_model, workdir, alpaca_file):
    run = _run(tiny_model, workdir, alpaca_file, "target", tuning={"method": "lora", "target": ["c_attn"]})
    _refused(run, r"tuning.target: \['c_attn'\] match no linear module of this model; available: \[.*'q_proj'")


def test_more_workers_than_the_cluster_can_place(tiny_model, workdir, alpaca_file):
    run = _run(tiny_model, workdir, alpaca_file, "workers", cluster={"num_workers": 64})
    _refused(run, r"cluster.num_workers: 64 workers x 1 CPUs need 64 CPUs; the cluster has 4")


def test_qlora_without_bitsandbytes_names_the_extra(tiny_model, workdir, alpaca_file, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    run = _run(tiny_model, workdir, alpaca_file, "qlora", tuning="qlora", deepspeed={"zero_stage": 2})
    _refused(run, r"pip install 'rayft\[qlora\]'")


def test_existing_output_is_not_overwritten(tiny_model, workdir, alpaca_file):
    run = _run(tiny_model, workdir, alpaca_file, "exists")
    out = workdir_of(run)
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("precious")
    from rayft.train import train

    for overwrite in (False, True):  # a directory holding a user's file is refused, overwrite or not
        run.output.overwrite = overwrite
        with pytest.raises(RunCheckError, match=r"holds files rayft did not write there \(keep.txt\)"):
            train(run)
        assert (out / "keep.txt").read_text() == "precious"


def test_malformed_rows_name_file_and_row(tiny_model, workdir, tmp_path):
    from rayft.train import train
    from rayft_core.data.formats import DataError

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"instruction": "q", "output": "a"}\n{"instruction": "q"}\n{"instruction": "q", "output": "a"}\nnot json\n'
    )
    run = run_config(tiny_model("llama"), [{"path": str(bad), "format": "alpaca"}], workdir / "bad", "rows")
    with pytest.raises(DataError) as e:
        train(run)
    assert "2 unusable rows (1 missing column, 1 invalid JSON)" in str(e.value)
    assert f"{bad}: row 2: missing column: no response column 'output'" in str(e.value)
    assert f"{bad}: row 4: invalid JSON" in str(e.value)
    assert "that is 50.00% of the rows; data.max_bad_fraction allows 0.00%" in str(e.value)


def test_cli_reports_config_errors_with_paths(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": "m"},
                "tuning": {"method": "lora", "rank": 0},
                "data": {"train": [{"path": "d.json", "format": "alpaca"}]},
                "deepspeed": {"zero_stage": 3},
                "trian": {},
            }
        )
    )
    result = CliRunner().invoke(main, ["config", "validate", str(path)])
    assert result.exit_code == 2
    assert "tuning.rank: Input should be greater than or equal to 1, got 0" in result.output
    assert "trian: unknown key (did you mean 'train'?)" in result.output
    result = CliRunner().invoke(main, ["config", "validate", str(path), "tuning.rank=4", "trian=null"])
    assert result.exit_code == 2 and "tuning.rank" not in result.output
    schema = json.loads(CliRunner().invoke(main, ["config", "schema"]).output)
    assert "RunConfig" == schema["title"]
