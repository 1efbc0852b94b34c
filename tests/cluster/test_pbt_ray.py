"""`rayft tune` with Population Based Training on the real local Ray cluster: a weak trial takes a strong trial's
checkpoint and continues from its step with perturbed values, and the sweep records the lineage."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from rayft_core.config import load_config, validate_config
from rayft_core.errors import UserInputError
from rayft_core.schema import ConfigError
from rayft_core.train.outputs import read_metrics
from tests.cluster.test_tune_ray import _base

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_a_weak_trial_continues_a_strong_trials_checkpoint_with_perturbed_values(tiny_model, workdir, alpaca_file):
    from rayft.tune import sweep

    base = _base(tiny_model, alpaca_file, workdir / "tune", "pbt", max_steps=12, lr_scheduler="constant")
    config = validate_config(
        {
            **base,
            "tune": {
                # the strong trial first, so that it has a checkpoint when the weak one first compares itself
                "space": {
                    "train.learning_rate": {"grid": [5e-3, 1e-8]},
                    "train.weight_decay": {"uniform": [0.01, 0.1]},
                },
                "num_samples": 1,
                "scheduler": "pbt",
                "perturbation_interval": 4,
                "resample_probability": 0.0,
                "max_concurrent_trials": 2,
            },
        }
    ).tune
    result = sweep(base, config)

    strong, weak = sorted(result.rows, key=lambda r: r.trial)  # grid order is trial order
    assert strong.lineage == "" and Path(strong.run_dir).name == strong.trial
    assert weak.lineage.startswith(f"from {strong.trial} at step "), weak.lineage
    continued = Path(weak.run_dir)
    assert continued.name.startswith(f"{weak.trial}.")  # a run of its own, beside the one it gave up
    schedule = yaml.safe_load((continued / "rayft_run.yaml").read_text())["train"]["schedule"]
    change = schedule[-1]
    step = change["after_step"]
    assert step in (4, 8) and change["origin"] == f"{strong.trial} at step {step}"
    donor = yaml.safe_load((Path(result.directory) / "trials" / strong.trial / "rayft_run.yaml").read_text())
    # explored: a list's value moved to a neighbour (or kept at the end of the list), a range's times 0.8 or 1.2
    assert change["set"]["train.learning_rate"] in (5e-3, 1e-8)
    ratio = change["set"]["train.weight_decay"] / donor["train"]["weight_decay"]
    assert ratio == pytest.approx(0.8) or ratio == pytest.approx(1.2) or change["set"]["train.weight_decay"] == 0.1

    records = read_metrics(continued)
    assert records[0]["step"] == step + 1 and records[-1]["step"] == 12  # from the donor's step, to the end
    assert all(r["train/lr"] == pytest.approx(change["set"]["train.learning_rate"]) for r in records)
    events = [json.loads(line) for line in (continued / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "resumed" and e["step"] == step for e in events)
    assert min(r["eval/loss"] for r in records if "eval/loss" in r) < max(
        r["eval/loss"] for r in read_metrics(Path(result.directory) / "trials" / weak.trial) if "eval/loss" in r
    )  # better than anything the weak trial reached with its own learning rate

    with open(Path(result.directory) / "results.csv") as f:
        table = {t["trial"]: t for t in csv.DictReader(f)}
    assert table[weak.trial]["lineage"] == weak.lineage and table[weak.trial]["run_dir"] == str(continued)
    if result.best is weak:  # the best run's YAML replays its lineage's values step by step
        best = load_config(Path(result.directory) / "best_run.yaml")
        assert best.train.learning_rate == 5e-3 and best.train.schedule[-1].after_step == step


def test_pbt_refuses_keys_it_cannot_change_in_the_middle_of_a_run(tiny_model, workdir, alpaca_file):
    from rayft.tune import sweep

    base = _base(tiny_model, alpaca_file, workdir / "tune", "pbt-bad")
    with pytest.raises(ConfigError, match=r"tune: scheduler: pbt changes values in the middle of a trial, which "):
        validate_config({**base, "tune": {"space": {"tuning.rank": {"choice": [4, 8]}}, "scheduler": "pbt"}})
    late = validate_config(
        {
            **base,
            "tune": {
                "space": {"train.learning_rate": {"choice": [1e-3]}},
                "scheduler": "pbt",
                "perturbation_interval": 4,
            },
        }
    ).tune
    with pytest.raises(UserInputError, match=r"tune.perturbation_interval: PBT needs steps after the first"):
        sweep(base, late)  # max_steps 4
