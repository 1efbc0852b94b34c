"""Experiment trackers fed by rank 0 beside metrics.jsonl: TensorBoard, MLflow (a file store in the
run's directory) and Weights & Biases (offline mode; `wandb sync` uploads later). Nothing here needs a
network: tracking servers are an upload away, never a dependency of a run.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from rayft_core.config import RunConfig
from rayft_core.errors import UserInputError

TRACKER_PACKAGES = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}
TENSORBOARD_DIR, MLFLOW_DIR, WANDB_DIR = "tensorboard", "mlruns", "wandb"


def missing_trackers(run: RunConfig) -> list[str]:
    """The trackers of output.report_to whose package is not installed, with the extra that installs them."""
    return [
        f"output.report_to: {name} needs {TRACKER_PACKAGES[name]}: pip install 'rayft[tracking]'"
        for name in run.output.report_to
        if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None
    ]


class Trackers:
    """Open on rank 0 only, writing into ``out`` (rank 0's run directory); ``log`` takes the numeric metrics
    of one report."""

    def __init__(self, run: RunConfig, out: Path, resumed: bool = False):
        problems = missing_trackers(run)
        if problems:
            raise UserInputError("; ".join(problems))
        self._writers: list[Any] = []
        self._closers: list[Any] = []
        name = run.output.name
        config = {k: v for k, v in run.model_dump(mode="json").items() if k != "data"}
        if "tensorboard" in run.output.report_to:
            from tensorboardX import SummaryWriter

            writer = SummaryWriter(str(out / TENSORBOARD_DIR))
            self._writers.append(lambda m, step: [writer.add_scalar(k, v, step) for k, v in m.items()])
            self._closers.append(writer.close)
        if "mlflow" in run.output.report_to:
            import mlflow

            # a file store needs no server or database; MLflow 3 keeps it only on request
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            client = mlflow.MlflowClient(tracking_uri=(out / MLFLOW_DIR).absolute().as_uri())
            experiment = client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
            runs = client.search_runs([experiment_id], max_results=1) if resumed else []
            run_id = runs[0].info.run_id if runs else client.create_run(experiment_id, run_name=name).info.run_id
            if not runs:
                for k, v in _flatten(config).items():
                    client.log_param(run_id, k, v)

            def log_mlflow(m: dict[str, float], step: int) -> None:
                for k, v in m.items():
                    client.log_metric(run_id, k.replace("/", "."), v, step=step)  # keys stay readable in the UI

            self._writers.append(log_mlflow)
            self._closers.append(lambda: client.set_terminated(run_id))
        if "wandb" in run.output.report_to:
            import wandb

            wb = wandb.init(
                project="rayft",
                name=name,
                id=name,
                dir=str(out),
                mode="offline",
                config=config,
                resume="allow" if resumed else None,
            )
            self._writers.append(lambda m, step: wb.log(m, step=step))
            self._closers.append(wb.finish)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        numbers = {k: float(v) for k, v in metrics.items() if k != "step" and isinstance(v, (int, float))}
        for write in self._writers:
            write(numbers, step)

    def close(self) -> None:
        for close in self._closers:
            close()


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:250]  # MLflow caps parameter values
    return out
