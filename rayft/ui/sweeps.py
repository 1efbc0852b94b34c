"""The Sweep tab's server side: a `rayft tune` sweep's trials as they train, read from its folder.

While the sweep runs, each trial is its run folder under trials/ (its values in its rayft_run.yaml, its metric in
its metrics.jsonl); once it ends, results.csv holds the final table and best_run.yaml the best trial's run.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import yaml

from rayft.tune import BEST_YAML, RESULTS_CSV, TRIALS_DIR
from rayft.ui.runs import SWEEP_FILE, metrics, read_or_none
from rayft_core.errors import UserInputError
from rayft_core.schema import get_key
from rayft_core.train.outputs import CONFIG_FILE, SUMMARY_FILE


def sweep_view(directory: str) -> dict[str, Any]:
    """The trials so far (id, values, latest metric, steps, state, run folder), the best of them, and whether the
    sweep has ended (its results.csv written)."""
    folder = Path(directory)
    started = read_or_none(folder / SWEEP_FILE)
    if started is None:
        raise UserInputError(f"{directory}: no {SWEEP_FILE}, so no rayft sweep there")
    tune = yaml.safe_load(started)["tune"]
    keys, metric, mode = list(tune["space"]), tune["metric"], tune["mode"]
    final = read_or_none(folder / RESULTS_CSV)
    trials = _final_trials(final, keys, metric) if final else _live_trials(folder / TRIALS_DIR, keys, metric)
    scored = [t for t in trials if t["metric"] is not None]
    best = (min if mode == "min" else max)(scored, key=lambda t: t["metric"]) if scored else None
    return {
        "keys": keys,
        "metric": metric,
        "mode": mode,
        "trials": trials,
        "finished": final is not None,
        "best": best,
        "best_run": yaml.safe_load(read_or_none(folder / BEST_YAML) or "null"),  # the best trial's run, to train again
    }


def _live_trials(trials_dir: Path, keys: list[str], metric: str) -> list[dict[str, Any]]:
    latest: dict[str, Path] = {}  # a PBT trial's runs are <id>, <id>.1, <id>.2...: its latest
    for run_dir in sorted(trials_dir.glob("*"), key=lambda p: (p.name.split(".")[0], _generation(p.name))):
        latest[run_dir.name.split(".")[0]] = run_dir
    trials = []
    for trial, run_dir in sorted(latest.items()):
        raw = yaml.safe_load(read_or_none(run_dir / CONFIG_FILE) or "{}") or {}
        history = metrics(str(run_dir))
        scores = [m[metric] for m in history if metric in m]
        trials.append(
            {
                "trial": trial,
                "values": {k: get_key(raw, k) for k in keys},
                "metric": scores[-1] if scores else None,
                "steps": history[-1]["step"] if history else None,
                "state": "finished" if (run_dir / SUMMARY_FILE).exists() else "running",
                "run_dir": str(run_dir),
            }
        )
    return trials


def _final_trials(text: str, keys: list[str], metric: str) -> list[dict[str, Any]]:
    rows = list(csv.DictReader(io.StringIO(text)))
    return [
        {
            "trial": r["trial"],
            "values": {k: yaml.safe_load(r[k]) if r[k] else None for k in keys},  # csv keeps text: 8 -> "8"
            "metric": float(r[metric]) if r[metric] else None,
            "steps": int(r["steps"]) if r["steps"] else None,
            "state": r["state"],
            "run_dir": r["run_dir"],
        }
        for r in rows
    ]


def _generation(name: str) -> int:
    return int(name.split(".")[1]) if "." in name else 0
