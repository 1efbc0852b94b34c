"""What a sweep (`rayft tune`) decides without Ray: each trial's run config, checks of the space against
the run schema, the results table, the plots, and which trials keep their model files."""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayft_core.config import UNION_TAGS, RunConfig, validate_config
from rayft_core.schema import ConfigError, set_key
from rayft_core.sweep_config import SweepConfig

# A trial's run directory keeps these whatever the retention rule: what it did and how well.
RECORD_FILES = ("rayft_run.yaml", "metrics.jsonl", "summary.json", "events.jsonl", "loss.png")


def trial_raw(base: dict, params: dict[str, Any]) -> dict:
    """The base run with the trial's values set; the sweep section is not part of a trial."""
    raw = copy.deepcopy(base)
    raw.pop("tune", None)
    for key, value in params.items():
        set_key(raw, key, value, f"space.{key}", UNION_TAGS)
    return raw


def check_space(base: dict, sweep: SweepConfig) -> list[str]:
    """Every value a trial can get, set alone into the base run, must give a valid run; and the metric must be
    one the runs report. Problems name the space key (an unknown one with its closest valid key)."""
    problems = []
    for key, dist in sweep.space.items():
        for value in next(iter(dist.values())):  # every listed value, or both bounds of a range
            try:
                validate_config(trial_raw(base, {key: value}))
            except ConfigError as e:
                problems += [f"space.{key}={value!r}: {p}" for p in e.problems]
                break
    metric = sweep.metric
    if not metric.startswith(("train/", "eval/")):
        problems.append(
            f"tune.metric: runs report train/* (at logging steps) and eval/* (at evaluation steps), got {metric!r}"
        )
    elif metric.startswith("eval/"):
        data = base.get("data", {})
        if not (data.get("eval") or data.get("val_size")):
            problems.append(
                f"tune.metric: {metric} needs evaluation data (data.eval or data.val_size); or sweep "
                "on a train/* metric"
            )
    return problems


def pbt_problems(train: Any, sweep: SweepConfig) -> list[str]:
    """What keeps a PBT sweep's trials (of the base run's ``train`` section) from reporting the metric with a
    checkpoint every perturbation_interval."""
    if not sweep.population_based:
        return []
    interval, problems = perturbation_interval(train, sweep), []
    if sweep.metric.startswith("train/") and interval % train.logging_steps:
        problems.append(
            f"tune.perturbation_interval: {interval} is not a multiple of train.logging_steps ({train.logging_steps}), "
            f"so {sweep.metric} is not reported with the checkpoints PBT passes between trials"
        )
    if not train.max_steps or interval >= train.max_steps:
        problems.append(
            f"tune.perturbation_interval: PBT needs steps after the first perturbation: set train.max_steps above "
            f"{interval}"
        )
    return problems


def perturbation_interval(train: Any, sweep: SweepConfig) -> int:
    if sweep.perturbation_interval:
        return sweep.perturbation_interval
    return (train.eval_steps or train.logging_steps) if sweep.metric.startswith("eval/") else train.logging_steps


def pbt_cadence(raw: dict, interval: int, metric: str) -> dict:
    """A PBT trial's run: evaluated and checkpointed every ``interval`` steps, every checkpoint kept while the sweep
    runs (any trial's latest may be taken by another; keep_top applies at the end). The sweep's own files (sweep.yaml,
    best_run.yaml) keep the user's cadence."""
    raw = copy.deepcopy(raw)
    raw.setdefault("checkpoint", {}).update(save_steps=interval, keep=None, keep_best=False)
    if metric.startswith("eval/"):
        raw.setdefault("train", {})["eval_steps"] = interval
    return raw


def grace_period(run: RunConfig, sweep: SweepConfig) -> int:
    """ASHA's first rung: the first step at which a trial reports the metric."""
    if sweep.grace_period:
        return sweep.grace_period
    if sweep.metric.startswith("eval/"):
        return run.train.eval_steps or run.train.max_steps or 1
    return run.train.logging_steps


@dataclass
class TrialRow:
    trial: str
    params: dict[str, Any]
    metric: float | None
    steps: int | None
    seconds: float | None
    state: str  # finished | stopped early | error: ...
    run_dir: str
    first_params: dict[str, Any] | None = None  # PBT: the values its lineage started with
    schedule: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # PBT: its changes (train.schedule)

    @property
    def lineage(self) -> str:
        """PBT: the checkpoints the trial continued from, with its values from then on."""
        return "; ".join(f"from {c['origin']}: {_values(c['set'])}" for c in self.schedule)


def _values(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def ranked(rows: list[TrialRow], mode: str) -> list[TrialRow]:
    """Trials with the metric, best first; then those without it."""
    scored = [r for r in rows if r.metric is not None and not math.isnan(r.metric)]
    scored.sort(key=lambda r: r.metric if mode == "min" else -r.metric)
    return scored + [r for r in rows if r not in scored]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def table(rows: list[TrialRow], keys: list[str], metric: str) -> str:
    header = ["trial", *keys, metric, "steps", "time_s", "state"]
    body = [
        [
            r.trial,
            *(_fmt(r.params.get(k)) for k in keys),
            _fmt(r.metric),
            _fmt(r.steps),
            _fmt(round(r.seconds, 1) if r.seconds is not None else None),
            r.state,
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *body])


def csv_text(rows: list[TrialRow], keys: list[str], metric: str) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["trial", *keys, metric, "steps", "time_s", "state", "run_dir", "lineage"])
    for r in rows:
        values = (r.params.get(k) for k in keys)
        writer.writerow([r.trial, *values, r.metric, r.steps, r.seconds, r.state, r.run_dir, r.lineage])
    return buf.getvalue()


def plot(rows: list[TrialRow], sweep: SweepConfig, path: Path) -> Path | None:
    """One panel per hyperparameter: the metric of every trial that reported it against the trial's value."""
    scored = [r for r in rows if r.metric is not None]
    if not scored:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(sweep.space)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), dpi=110, squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = [r.params.get(key) for r in scored]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        xs = values if numeric else [str(v) for v in values]
        ax.scatter(
            xs, [r.metric for r in scored], c=["tab:green" if r.state == "finished" else "tab:orange" for r in scored]
        )
        if "loguniform" in sweep.space[key]:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(sweep.metric)
        ax.grid(alpha=0.3)
    fig.suptitle("green: finished, orange: stopped early")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def best_run_raw(base: dict, best: TrialRow, sweep_name: str) -> dict:
    """The best trial's run, to rerun with `rayft train` as is: written beside the sweep, not into it. A PBT
    trial's is its lineage: the values it started with and, in train.schedule, each change from the step it came."""
    raw = trial_raw(base, best.first_params or best.params)
    raw.setdefault("output", {})["name"] = f"{sweep_name}-best"
    if best.schedule:
        raw.setdefault("train", {})["schedule"] = best.schedule
    return raw
