"""One trial of a sweep (`rayft tune`), in its Tune actor: a rayft training run on Ray Train workers whose reports
reach Tune, and, under PBT, the run it continues when it takes another trial's checkpoint."""

from __future__ import annotations

import json
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray import tune
from ray.train.v2.api.callback import UserCallback
from ray.util.queue import Queue

from rayft.train import checkpoint_uri, train
from rayft_core import storage
from rayft_core.config import RunConfig, validate_config
from rayft_core.sweep import pbt_cadence, trial_raw
from rayft_core.train.outputs import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE

POINTER_FILE = "rayft_checkpoint.json"  # a PBT trial's Tune checkpoint: which run's checkpoint, of which step


class _ToTune(UserCallback):
    """In the trial's Ray Train controller: each report that carries the sweep's metric, with the location of the
    checkpoint saved at the same step (or None), onto the queue the trial's Tune function reads. Tune (and ASHA,
    PBT) see one result per evaluation, each with the trial's step, so every trial is compared at the same steps."""

    def __init__(self, metric: str, queue: Any):
        self.metric, self.queue = metric, queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if self.metric in metrics[0]:
            self.queue.put((metrics[0], checkpoint_uri(checkpoint) if checkpoint else None))


@dataclass
class _Generation:
    """The rayft run a trial trains now: its first, or (PBT) one continuing another trial's checkpoint."""

    raw: dict  # its config
    resume: bool  # it exists: continue it from its own latest checkpoint
    start_from: str | None = None  # a new run that starts from this checkpoint (another trial's)


def run_trial(config: dict[str, Any]) -> None:
    """One trial (in a Tune actor): a rayft run of the base with this trial's values, trained by rayft.train.train
    in a thread while this function hands its reports to Tune. A trial restarted after the sweep's driver died
    continues its run from the latest checkpoint; a PBT trial handed another trial's checkpoint continues that one
    in a run directory of its own (_generation)."""
    trial = tune.get_context().get_trial_id()
    generation = _generation(config, trial, _pointer(tune.get_checkpoint()))
    interval = config["pbt_interval"]
    run = validate_config(pbt_cadence(generation.raw, interval, config["metric"]) if interval else generation.raw)
    if generation.resume and storage.read_text(storage.join(run.output.dir, SUMMARY_FILE)) is not None:
        # It finished before the sweep's driver died, and Tune had not yet recorded that: its results, not a rerun.
        record = storage.read_text(storage.join(run.output.dir, METRICS_FILE)) or ""
        for row in (json.loads(line) for line in record.splitlines() if line.strip()):
            if config["metric"] in row:
                tune.report(row)
        return
    queue, failure = Queue(actor_options={"num_cpus": 0}), []

    def fit() -> None:
        try:
            callbacks = [_ToTune(config["metric"], queue)]
            kwargs = dict(
                resume=generation.resume, start_from=generation.start_from, memory_share=config["memory_share"]
            )
            train(run, callbacks=callbacks, progress=False, **kwargs)
        except BaseException as e:  # raised again in the trial's own thread, where Tune sees it
            failure.append(e)
        finally:
            queue.put(None)

    thread = threading.Thread(target=fit, name=f"rayft-trial-{trial}", daemon=True)
    thread.start()
    while (item := queue.get()) is not None:
        _report(*item, run=run, trial=trial, pbt=bool(interval))
    thread.join()
    if failure:
        raise failure[0]


def _report(metrics: dict[str, Any], checkpoint: str | None, run: RunConfig, trial: str, pbt: bool) -> None:
    """A result to Tune; under PBT, with a checkpoint that points at the run's (Tune copies it into the trial's
    directory: a few bytes, where the run's own checkpoint may be gigabytes)."""
    if not (pbt and checkpoint):
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="rayft-pbt-") as pointer:
        found = {"trial": trial, "run_dir": run.output.dir, "checkpoint": checkpoint, "step": metrics["step"]}
        (Path(pointer) / POINTER_FILE).write_text(json.dumps(found))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(pointer))


def _pointer(checkpoint: Any) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return json.loads((Path(directory) / POINTER_FILE).read_text())


def _generation(config: dict[str, Any], trial: str, pointer: dict[str, Any] | None) -> _Generation:
    """Which run the trial trains. Its runs are trials/<trial id>, then (PBT) <trial id>.1, .2, ...: a new one
    each time it takes another trial's checkpoint, with that trial's config and, in train.schedule, the values
    that trial had at each step and this trial's values from the checkpoint's step on."""
    runs = trial_runs(config["trials_dir"], trial)
    latest = runs[-1]
    started = storage.read_text(storage.join(latest, CONFIG_FILE))
    output = {"storage_path": config["trials_dir"], "overwrite": False}
    if pointer is None or pointer["run_dir"] == latest:  # its own run: new, or to continue
        raw = yaml.safe_load(started) if started else trial_raw(config["base"], config["params"])
        raw["output"] = {**raw.get("output", {}), **output, "name": Path(latest).name}
        return _Generation(raw, resume=started is not None)
    raw = yaml.safe_load(storage.read_text(storage.join(pointer["run_dir"], CONFIG_FILE)))
    step = pointer["step"]
    schedule = [c for c in raw["train"].get("schedule", []) if c["after_step"] <= step]
    origin = f"{pointer['trial']} at step {step}"
    raw["train"]["schedule"] = [*schedule, {"after_step": step, "set": config["params"], "origin": origin}]
    name = f"{trial}.{len(runs)}" if started else Path(latest).name
    raw["output"] = {**raw["output"], **output, "name": name}
    return _Generation(raw, resume=False, start_from=pointer["checkpoint"])


def trial_runs(trials_dir: str, trial: str) -> list[str]:
    """The trial's run directories that hold a run, oldest first; the first (maybe not yet started) at least."""
    runs = [storage.join(trials_dir, trial)]
    while storage.exists(storage.join(trials_dir, f"{trial}.{len(runs)}", CONFIG_FILE)):
        runs.append(storage.join(trials_dir, f"{trial}.{len(runs)}"))
    return runs
