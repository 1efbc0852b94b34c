"""Checkpoints on a real local Ray cluster: a worker killed mid-run is replaced and the run continues
from the latest checkpoint to the planned step, no step counted twice, no row replayed or skipped (epochs
end in a padded step; the checkpoints fall inside epochs); a stopped run continues with --resume; a
checkpoint only resumes into the run that wrote it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rayft.checks import RunCheckError
from rayft_core.train.outputs import read_metrics
from tests.helpers import (
    checkpoints,
    kill_a_worker_after_first_checkpoint,
    resumes,
    run_config,
    train_killed,
    train_through_a_worker_loss,
)

pytestmark = pytest.mark.usefixtures("ray_cluster")

STEPS, EVERY = 12, 4
ROWS = 18  # 2 workers x micro-batches of 2: 5 steps an epoch, the last with 2 rows and 2 padding rows


def _run(tiny_model, workdir, alpaca_file, name, **sections):
    sections.setdefault("cluster", {"num_workers": 2, "max_failures": 1})
    sections.setdefault("checkpoint", {"save_steps": EVERY, "keep": 2})
    return run_config(
        tiny_model("llama"),
        [{"path": str(alpaca_file), "format": "alpaca", "num_samples": ROWS}],
        workdir / "ckpt",
        name,
        train={"max_steps": STEPS, "micro_batch_size": 2, "logging_steps": 1},
        **sections,
    )


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, workdir, alpaca_file) -> list[float]:
    """The losses of the same run without a failure: a resumed run must reproduce them, which it can only
    if the model, optimizer, scheduler and data position all came back."""
    from rayft.train import train

    run = _run(
        tiny_model,
        workdir,
        alpaca_file,
        "uninterrupted",
        cluster={"num_workers": 2},
        checkpoint={},
        output={"report_to": ["tensorboard", "mlflow", "wandb"]},
    )
    out = train(run)
    _check_summary_and_trackers(out)
    return [r["train/loss"] for r in read_metrics(out)]


def _check_summary_and_trackers(out: Path) -> None:
    """summary.json, and every train/loss in each tracker's own files."""
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["tokens"] > 0 and summary["tokens_per_s"] > 0
    assert summary["epoch"]["rows"] == ROWS and summary["epoch"]["padding_rows"] == 2
    assert len(summary["peak_memory_gb_per_worker"]) == 2 and all(p > 0 for p in summary["peak_memory_gb_per_worker"])
    losses = [r["train/loss"] for r in read_metrics(out)]
    assert _tensorboard_scalars(out / "tensorboard", "train/loss") == pytest.approx(losses)
    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("uninterrupted").experiment_id])
    history = sorted(client.get_metric_history(mlflow_run.info.run_id, "train.loss"), key=lambda m: m.step)
    assert [m.value for m in history] == pytest.approx(losses) and mlflow_run.data.params["tuning.method"] == "lora"
    assert [p.stat().st_size > 0 for p in (out / "wandb").glob("offline-run-*/run-*.wandb")] == [True]


def _tensorboard_scalars(directory: Path, tag: str) -> list[float]:
    """The values of one tag, read straight from TensorBoard's TFRecord event files."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    values = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + length])  # after the length and its CRC
            pos += 12 + length + 4
            values += [v.simple_value for v in event.summary.value if v.tag == tag]
    return values


def _each_step_once(out: Path, uninterrupted: list[float]) -> None:
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["train/loss"] for r in rows] == pytest.approx(uninterrupted, rel=1e-3)


def test_worker_killed_mid_run_is_replaced_and_the_run_finishes(tiny_model, workdir, alpaca_file, uninterrupted):

    run = _run(tiny_model, workdir, alpaca_file, "worker-loss", deepspeed={"zero_stage": 3})
    out = train_through_a_worker_loss(run)
    _each_step_once(out, uninterrupted)
    events = resumes(out)
    assert len(events) == 1 and events[0]["step"] % EVERY == 0 and 0 < events[0]["step"] < STEPS, events
    assert events[0]["checkpoint"].startswith(str(out))  # restored from storage_path, not from a worker's disk
    assert len(checkpoints(out)) <= 2  # checkpoint.keep
    assert (out / "adapter_model.safetensors").is_file()


def test_stopped_run_resumes_and_refuses_another_method(tiny_model, workdir, alpaca_file, uninterrupted):
    from ray.train import TrainingFailedError

    from rayft.train import train

    run = _run(tiny_model, workdir, alpaca_file, "resume", cluster={"num_workers": 2, "max_failures": 0})
    out = Path(run.output.dir)
    errors = train_killed(run, kill_a_worker_after_first_checkpoint)
    assert errors and isinstance(errors[0], TrainingFailedError), errors
    done_before = max(r["step"] for r in read_metrics(out))
    assert done_before < STEPS

    other = _run(tiny_model, workdir, alpaca_file, "resume", tuning={"method": "full"})
    with pytest.raises(RunCheckError, match=r"tuning: the run being resumed has .*'lora'.* this config .*'full'"):
        train(other, resume=True)
    with pytest.raises(RunCheckError, match="already holds a run written by rayft; .* --resume"):
        train(run)

    assert train(run, resume=True) == out
    _each_step_once(out, uninterrupted)
    assert len(resumes(out)) == 1
