"""`rayft tune` on the real local Ray cluster: trials are rayft training runs on Ray Train workers, ASHA stops
the weak ones, the best trial's config reruns to its metric, a sweep resumes after its driver is killed,
and a bad sweep stops before any trial with the key named."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml

from rayft_core.config import load_config, validate_config
from rayft_core.errors import UserInputError
from rayft_core.train.outputs import read_metrics
from tests.helpers import run_config

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _base(tiny_model, alpaca_file, out: Path, name: str, **train) -> dict:
    run = run_config(
        tiny_model("llama"),
        [{"path": str(alpaca_file), "format": "alpaca"}],
        out,
        name,
        data={"val_size": 16},
        train={"max_steps": 4, "micro_batch_size": 2, "logging_steps": 1, "eval_steps": 2, **train},
        cluster={"num_workers": 1},
    )
    return run.model_dump(mode="json", exclude={"tune"})


def test_asha_stops_weak_trials_and_the_best_config_reruns_to_its_metric(tiny_model, workdir, alpaca_file):
    from rayft.train import train
    from rayft.tune import sweep

    base = _base(tiny_model, alpaca_file, workdir / "tune", "asha")
    # Grid order is trial order: two learning rates that learn go first, one that barely moves the model follows
    # and meets ASHA's first rung (step 2) after the good ones recorded theirs there.
    sweep_config = validate_config(
        {
            **base,
            "tune": {
                "space": {"train.learning_rate": {"grid": [5e-3, 3e-3, 1e-8]}},
                "search": "grid",
                "num_samples": 1,
                "scheduler": "asha",
                "grace_period": 2,
                "max_concurrent_trials": 2,
            },
        }
    ).tune
    result = sweep(base, sweep_config)

    rows = {r.trial: r for r in result.rows}
    assert len(rows) == 3
    states = sorted(r.state for r in result.rows)
    assert "stopped early" in states and "finished" in states, states
    assert result.best.params["train.learning_rate"] in (5e-3, 3e-3) and result.best.state == "finished"
    stopped = [r for r in result.rows if r.state == "stopped early"]
    assert all(r.steps < 4 for r in stopped)

    directory = Path(result.directory)
    with open(directory / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["trial"] for t in table] == [r.trial for r in result.rows] and table[0]["eval/loss"]
    assert (directory / "metric_vs_params.png").stat().st_size > 0
    # every entry Ray Tune and the trials wrote is one the deletion rule knows: --overwrite can replace the sweep
    from rayft_core import ownership

    assert ownership.foreign_entries(str(directory), ownership.SWEEP) == []
    assert all(ownership.foreign_entries(r.run_dir, ownership.RUN) == [] for r in result.rows)
    # retention: the best trial keeps its adapter, the others only their record
    assert (Path(result.best.run_dir) / "adapter_model.safetensors").is_file()
    for r in result.rows[1:]:
        kept = {p.name for p in Path(r.run_dir).iterdir()} if Path(r.run_dir).exists() else set()
        assert "adapter_model.safetensors" not in kept and not any(k.startswith("checkpoint_") for k in kept)
        assert "metrics.jsonl" in kept

    best = load_config(directory / "best_run.yaml")
    assert best.tune is None and best.train.learning_rate == result.best.params["train.learning_rate"]
    out = train(best)
    rerun = [m["eval/loss"] for m in read_metrics(out) if "eval/loss" in m][-1]
    assert rerun == pytest.approx(result.best.metric, rel=1e-3)


def test_a_sweep_resumes_after_its_driver_is_killed(tiny_model, workdir, alpaca_file, tmp_path):
    """The driver (a `rayft tune` process on the same cluster) is killed once one trial has finished; `--resume`
    keeps that trial and runs the rest."""
    base = _base(tiny_model, alpaca_file, workdir / "tune", "resume", max_steps=4)
    config = tmp_path / "sweep.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                **base,
                "tune": {
                    "space": {"tuning.rank": {"grid": [4, 8]}},
                    "search": "grid",
                    "num_samples": 1,
                    "scheduler": "fifo",
                    "max_concurrent_trials": 1,
                },
            }
        )
    )
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    command = [sys.executable, "-m", "rayft.cli", "tune", str(config)]
    trials = workdir / "tune" / "resume" / "trials"

    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not list(trials.glob("*/summary.json")) and time.time() < deadline and driver.poll() is None:
        time.sleep(0.2)
    assert driver.poll() is None, driver.stdout.read()[-3000:]
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    (first,) = trials.glob("*/summary.json")
    first_metrics = (first.parent / "metrics.jsonl").read_text()

    done = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(workdir / "tune" / "resume" / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert sorted(int(t["tuning.rank"]) for t in table) == [4, 8]
    assert all(t["state"] == "finished" for t in table), table
    assert (first.parent / "metrics.jsonl").read_text() == first_metrics  # the finished trial was not trained again
    assert len(list(trials.glob("*/summary.json"))) == 2


def test_a_bad_sweep_stops_before_any_trial(tiny_model, workdir, alpaca_file):
    from rayft.tune import sweep

    base = _base(tiny_model, alpaca_file, workdir / "tune", "bad")
    bad = validate_config({**base, "tune": {"space": {"tuning.rnak": {"choice": [4, 8]}}}}).tune
    with pytest.raises(
        UserInputError, match=r"space.tuning.rnak=4: tuning.rnak: unknown key \(did you mean 'rank'\?\)"
    ):
        sweep(base, bad)
    with pytest.raises(Exception, match=r"tune.space: tuning.rank: choice needs a non-empty list of values, got \[\]"):
        validate_config({**base, "tune": {"space": {"tuning.rank": {"choice": []}}}})
    no_eval = {**base, "data": {**base["data"], "val_size": 0}, "train": {**base["train"], "eval_steps": None}}
    metric = validate_config({**no_eval, "tune": {"space": {"tuning.rank": {"choice": [4]}}}}).tune
    with pytest.raises(UserInputError, match=r"tune.metric: eval/loss needs evaluation data"):
        sweep(no_eval, metric)
    assert not (workdir / "tune" / "bad").exists()


def test_rayft_train_refuses_a_run_with_a_sweep(tiny_model, alpaca_file, tmp_path):
    from click.testing import CliRunner

    from rayft.cli import main

    base = _base(tiny_model, alpaca_file, tmp_path, "x")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**base, "tune": {"space": {"tuning.rank": {"choice": [4, 8]}}}}))
    result = CliRunner().invoke(main, ["train", str(config)])
    assert result.exit_code == 2 and "this run has a tune: section (a sweep); run it with `rayft tune" in result.output


def test_a_metric_no_trial_reports_is_named_with_what_they_did_report(tiny_model, workdir, alpaca_file):
    from rayft.tune import sweep

    base = _base(tiny_model, alpaca_file, workdir / "tune", "no-metric", max_steps=1)
    config = validate_config(
        {
            **base,
            "tune": {
                "space": {"tuning.rank": {"choice": [4]}},
                "num_samples": 1,
                "metric": "train/accuracy",
                "scheduler": "fifo",
            },
        }
    ).tune
    with pytest.raises(
        UserInputError, match=r"tune.metric: no trial reported 'train/accuracy'; they reported \[.*'train/loss'"
    ):
        sweep(base, config)
