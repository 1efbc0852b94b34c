"""Hyperparameter sweeps on Ray Tune: each trial is a whole rayft training run on Ray Train workers.

    rayft tune examples/tune_lora.yaml             # the run's tune: section
    rayft tune run.yaml --space space.yaml         # or the space from its own file
    rayft tune run.yaml --resume                   # after the driver died: finished trials are kept

Ray Train V2's way: each Tune trial runs a small driver function that builds the run's TorchTrainer
(rayft.train.train) and forwards its reports to Tune through a Ray Train callback; stopping a trial
(ASHA) ends that driver, and with it the trial's Ray Train controller and workers.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import tune

from rayft.checks import OVERWRITE_FLAG, check_cluster, check_config
from rayft.cluster import connect
from rayft.tune_trial import run_trial, trial_runs
from rayft_core import ownership, storage
from rayft_core.config import RunConfig, validate_config
from rayft_core.errors import UserInputError
from rayft_core.sweep import (
    RECORD_FILES,
    TrialRow,
    best_run_raw,
    check_space,
    csv_text,
    grace_period,
    pbt_problems,
    perturbation_interval,
    plot,
    ranked,
    table,
)
from rayft_core.sweep_config import SweepConfig
from rayft_core.train.outputs import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE

logger = logging.getLogger(__name__)

DATA_CACHE = "data-cache"  # in the sweep's directory, where no data.cache_dir is set
TRIALS_DIR = "trials"  # storage_path/name/trials/<trial id>: each trial's rayft run directory
RESULTS_CSV, BEST_YAML, PLOT_PNG = "results.csv", "best_run.yaml", "metric_vs_params.png"
SWEEP_FILE = ownership.SWEEP.markers[0]  # the sweep's run and space, written first


@dataclass
class SweepResult:
    directory: str  # storage_path/name: Tune's state, the trials, results.csv, best_run.yaml, the plot
    rows: list[TrialRow]  # best first
    best: TrialRow


def _distribution(kind: str, values: list[Any], as_grid: bool) -> Any:
    if kind == "grid" or (kind == "choice" and as_grid):
        return tune.grid_search(values)
    if kind == "choice":
        return tune.choice(values)
    return tune.uniform(*values) if kind == "uniform" else tune.loguniform(*values)


def _trial_worker_cpus(run: RunConfig, sweep: SweepConfig, resources: dict[str, float]) -> float:
    """cluster.cpus_per_worker of every trial. auto: one CPU, so that as many trials run at once as the cluster
    holds; with tune.max_concurrent_trials, those trials' share of the CPUs (one each kept for Ray Data)."""
    c = run.cluster
    if c.cpus_per_worker != "auto":
        return c.cpus_per_worker
    trials = sweep.max_concurrent_trials
    if not trials:
        return 1
    return max(1, int((resources.get("CPU", 0) - trials) // (trials * c.num_workers)))


def _concurrency(run: RunConfig, sweep: SweepConfig, resources: dict[str, float], use_gpu: bool) -> int:
    """Trials at once: as many whole worker groups as the cluster holds, one CPU each left for Ray Data."""
    if sweep.max_concurrent_trials:
        return sweep.max_concurrent_trials
    c = run.cluster
    if use_gpu:
        return max(1, int(resources.get("GPU", 0) // c.num_workers))
    return max(1, int(resources.get("CPU", 0) // (c.num_workers * c.cpus_per_worker + 1)))


def sweep(raw: dict, sweep_config: SweepConfig, resume: bool = False) -> SweepResult:
    """Run (or resume) a sweep of the run ``raw`` (its YAML mapping) over ``sweep_config``'s space."""
    base = {k: v for k, v in raw.items() if k != "tune"}
    run = validate_config(base).with_absolute_paths()
    problems = check_space(base, sweep_config) or pbt_problems(run.train, sweep_config)
    if problems:
        raise UserInputError("the sweep cannot start:\n" + "\n".join(f"  - {p}" for p in problems))
    base = run.model_dump(mode="json", exclude={"tune"})  # absolute paths, for trials in other working directories
    directory = run.output.dir
    trials_dir = storage.join(directory, TRIALS_DIR)
    if resume and not tune.Tuner.can_restore(directory):
        raise UserInputError(
            f"--resume: {directory} holds no sweep to resume; check output.name and output.storage_path"
        )
    if not resume:  # model, targets, data, packages; and that the sweep's directory is free (or an earlier sweep's)
        check_config(run, output=ownership.SWEEP)

    connect()
    resources = ray.cluster_resources()
    use_gpu = resources.get("GPU", 0) > 0 if run.cluster.use_gpu == "auto" else bool(run.cluster.use_gpu)
    run.cluster.cpus_per_worker = base["cluster"]["cpus_per_worker"] = _trial_worker_cpus(run, sweep_config, resources)
    check_cluster(run, resources, use_gpu)
    if not resume:
        _start(run, sweep_config, base, directory)
    elif not run.data.cache_dir:  # the cache the sweep's start wrote
        run.data.cache_dir = base["data"]["cache_dir"] = storage.join(directory, DATA_CACHE)

    as_grid, concurrency = sweep_config.search == "grid", _concurrency(run, sweep_config, resources, use_gpu)
    param_space = {
        "base": base,
        "trials_dir": trials_dir,
        "metric": sweep_config.metric,
        # PBT: the steps at which its trials evaluate and checkpoint (rayft_core.sweep.pbt_cadence)
        "pbt_interval": perturbation_interval(run.train, sweep_config) if sweep_config.population_based else None,
        "memory_share": 1.0 if use_gpu else 1 / concurrency,  # of the memory, for gradient_checkpointing auto
        "params": {k: _distribution(*next(iter(d.items())), as_grid) for k, d in sweep_config.space.items()},
    }
    # The trial's driver needs next to nothing (Tune refuses an empty request); its Train workers hold the CPUs.
    trainable = tune.with_resources(run_trial, {"CPU": 0.01})
    # A trial that never reports the metric (a typo, a stage without it) is named after the sweep with what it did
    # report (_finish); Tune's own check would instead abort every other trial on the first such result.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    if resume:
        tuner = tune.Tuner.restore(
            directory, trainable, resume_unfinished=True, resume_errored=False, param_space=param_space
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=_tune_config(run, sweep_config, concurrency),
            run_config=tune.RunConfig(
                name=run.output.name,
                storage_path=run.output.storage_path,
                failure_config=tune.FailureConfig(max_failures=0),
                verbose=1,
            ),
        )
    grid = tuner.fit()
    return _finish(grid, run, sweep_config, base, directory, trials_dir)


def _start(run: RunConfig, sweep_config: SweepConfig, base: dict, directory: str) -> None:
    """A new sweep's directory, claimed and marked, and the data tokenized once on the driver into a cache that
    every trial reads (unless its data keys differ)."""
    from rayft.data import build_run_data

    ownership.claim(directory, ownership.SWEEP, run.output.overwrite, OVERWRITE_FLAG)
    # first: whatever happens next, the directory is known to be the sweep's
    storage.write_text(
        storage.join(directory, SWEEP_FILE),
        yaml.safe_dump({**base, "tune": sweep_config.model_dump(mode="json")}, sort_keys=False),
    )
    if not run.data.cache_dir:
        run.data.cache_dir = base["data"]["cache_dir"] = storage.join(directory, DATA_CACHE)
    build_run_data(run)


def _tune_config(run: RunConfig, sweep_config: SweepConfig, concurrency: int) -> tune.TuneConfig:
    """The metric, the scheduler (ASHA stops weak trials early) and the search algorithm of a new sweep."""
    scheduler = None
    if sweep_config.population_based:
        scheduler = _pbt(run, sweep_config)
    elif sweep_config.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            time_attr="step",
            max_t=run.train.max_steps or 10**9,
            grace_period=grace_period(run, sweep_config),
            reduction_factor=sweep_config.reduction_factor,
        )
    search_alg = None
    if sweep_config.search == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise UserInputError("tune.search optuna needs optuna: pip install 'rayft[tune]'") from None
        search_alg = OptunaSearch(seed=run.train.seed)
    return tune.TuneConfig(
        metric=sweep_config.metric,
        mode=sweep_config.mode,
        scheduler=scheduler,
        search_alg=search_alg,
        num_samples=sweep_config.num_samples,
        max_concurrent_trials=concurrency,
        # A stopped trial's actor must exit: the trial's Train controller and workers are owned
        # by it and go with it. A reused actor would keep them training.
        reuse_actors=False,
    )


def _pbt(run: RunConfig, sweep_config: SweepConfig) -> Any:
    """Ray Tune's PBT over the space's keys: a range's value perturbed by 0.8 or 1.2 and kept inside the range, a
    list's moved to a neighbour; either drawn anew with resample_probability. PB2: values chosen in the ranges by
    its Gaussian-process bandit."""
    from ray.tune.schedulers import PopulationBasedTraining

    interval = perturbation_interval(run.train, sweep_config)
    if sweep_config.scheduler == "pb2":
        try:
            import sklearn  # noqa: F401 - PB2's Gaussian process; Ray's PB2 would only say so at its first decision
            from ray.tune.schedulers.pb2 import PB2
        except ImportError:
            raise UserInputError("tune.scheduler pb2 needs scikit-learn: pip install 'rayft[tune]'") from None
        bounds = {key: next(iter(dist.values())) for key, dist in sweep_config.space.items()}
        return PB2(
            time_attr="step",
            perturbation_interval=interval,
            hyperparam_bounds={"params": bounds},
            quantile_fraction=sweep_config.quantile_fraction,
        )

    mutations, ranges = {}, {}
    for key, dist in sweep_config.space.items():
        kind, values = next(iter(dist.items()))
        mutations[key] = values if kind in ("choice", "grid") else _distribution(kind, values, as_grid=False)
        if kind in ("uniform", "loguniform"):
            ranges[key] = values

    def inside_the_ranges(config: dict[str, Any]) -> dict[str, Any]:
        params = config["params"]
        for key, (low, high) in ranges.items():
            params[key] = min(max(params[key], low), high)
        return config

    return PopulationBasedTraining(
        time_attr="step",
        perturbation_interval=interval,
        hyperparam_mutations={"params": mutations},
        quantile_fraction=sweep_config.quantile_fraction,
        resample_probability=sweep_config.resample_probability,
        custom_explore_fn=inside_the_ranges,
    )


def _finish(
    grid: Any, run: RunConfig, sweep_config: SweepConfig, base: dict, directory: str, trials_dir: str
) -> SweepResult:
    metric = sweep_config.metric
    rows = [_row(result, trials_dir, sweep_config) for result in grid]
    rows = ranked(rows, sweep_config.mode)
    if not rows or rows[0].metric is None:
        seen = sorted(set().union(*(_reported(r.run_dir) for r in rows)))
        errors = [f"{r.trial}: {r.state}" for r in rows if r.state.startswith("error")]
        raise UserInputError(
            f"tune.metric: no trial reported {metric!r}; they reported {seen or 'nothing'}"
            + (f" ({'; '.join(errors)})" if errors else "")
        )
    best = rows[0]
    keys = list(sweep_config.space)
    storage.write_text(storage.join(directory, RESULTS_CSV), csv_text(rows, keys, metric))
    best_raw = best_run_raw(base, best, run.output.name)
    storage.write_text(storage.join(directory, BEST_YAML), yaml.safe_dump(best_raw, sort_keys=False))
    local = storage.local_run_dir(directory)
    local.mkdir(parents=True, exist_ok=True)
    if plot(rows, sweep_config, local / PLOT_PNG):
        storage.publish(local, directory)
    for row in rows:  # below keep_top: the record stays, the model files and checkpoints go; PBT's earlier runs too
        earlier = [d for d in trial_runs(trials_dir, row.trial) if d != row.run_dir]
        for run_dir in earlier + ([row.run_dir] if row not in rows[: sweep_config.keep_top] else []):
            ownership.clear(run_dir, ownership.RUN, keep=RECORD_FILES)
    print(table(rows, keys, metric))
    print(
        f"best: {best.trial} {metric}={best.metric:.6g} {best.params}\n"
        f"rerun it: rayft train {storage.join(directory, BEST_YAML)}\n"
        f"serve it beside a running `rayft serve` of its base: rayft serve --best-of {directory}\n"
        f"results: {storage.join(directory, RESULTS_CSV)}, plot: {storage.join(directory, PLOT_PNG)}"
    )
    return SweepResult(directory=directory, rows=rows, best=best)


def _row(result: Any, trials_dir: str, sweep_config: SweepConfig) -> TrialRow:
    """A trial's line in the results: its final values and run; under PBT, the lineage that led there."""
    trial_id, metric = _trial_id(result), sweep_config.metric
    run_dir = trial_runs(trials_dir, trial_id)[-1]
    frame = result.metrics_dataframe
    values = frame[metric].dropna().tolist() if frame is not None and metric in frame else []
    finished = storage.read_text(storage.join(run_dir, SUMMARY_FILE)) is not None
    state = f"error: {type(result.error).__name__}" if result.error else ("finished" if finished else "stopped early")
    metrics = result.metrics or {}
    row = TrialRow(
        trial=trial_id,
        params=result.config["params"],
        metric=values[-1] if values else None,
        steps=metrics.get("step"),
        seconds=metrics.get("time_total_s"),
        state=state,
        run_dir=run_dir,
    )
    config = storage.read_text(storage.join(run_dir, CONFIG_FILE))
    raw = yaml.safe_load(config) if config else {}
    if raw.get("train", {}).get("schedule"):  # a PBT trial that continued another's checkpoint
        row.first_params = {k: raw[k.split(".")[0]][k.split(".")[1]] for k in sweep_config.space}
        row.schedule = raw["train"]["schedule"]
    return row


def _reported(run_dir: str) -> set[str]:
    """Every metric name a trial's run wrote to its metrics.jsonl."""
    record = storage.read_text(storage.join(run_dir, METRICS_FILE)) or ""
    return {k for line in record.splitlines() if line.strip() for k in json.loads(line)} - {"step"}


def _trial_id(result: Any) -> str:
    """Tune's id of the trial (what run_trial named its run directory): reported with every result, and part
    of the trial's directory name for a trial that reported nothing."""
    if result.metrics and "trial_id" in result.metrics:
        return result.metrics["trial_id"]
    found = re.search(r"[0-9a-f]{5}_\d{5}", Path(result.path).name)
    return found.group(0) if found else Path(result.path).name
