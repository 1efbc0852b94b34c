"""Where a run's artifacts go, and what happens when that place fails: a run whose storage_path is an s3://
bucket (moto's server on loopback), early stopping with the best checkpoint named; a disk that fills while
checkpointing; a storage path that cannot be written; a cluster address where nothing answers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from rayft.checks import RunCheckError
from rayft_core.errors import UserInputError
from rayft_core.train.outputs import read_metrics
from tests.helpers import run_config

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _s3() -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"])


def _read(fs: pafs.FileSystem, path: str) -> str:
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def test_s3_storage_holds_every_artifact_and_early_stopping_names_the_best_checkpoint(
    tiny_model, workdir, alpaca_file, s3_bucket, monkeypatch
):
    from rayft.train import train

    monkeypatch.chdir(workdir)  # a stray local copy would land here as ./s3:/...
    # Any evaluation after the first counts as "not improved" (threshold 10): patience 2 stops at step 3 of 8.
    run = run_config(
        tiny_model("llama"),
        [{"path": str(alpaca_file), "format": "alpaca"}],
        workdir,
        "s3-early",
        data={"val_size": 16},
        train={
            "max_steps": 8,
            "micro_batch_size": 2,
            "logging_steps": 1,
            "eval_steps": 1,
            "early_stopping_patience": 2,
            "early_stopping_threshold": 10.0,
        },
        checkpoint={"save_steps": 1, "keep": 1, "keep_best": True},
        cluster={"num_workers": 2},
        output={"storage_path": f"s3://{s3_bucket}/runs", "name": "s3-early"},
    )
    out = train(run)
    assert out == f"s3://{s3_bucket}/runs/s3-early"
    assert not (workdir / "s3:").exists()

    fs, root = _s3(), f"{s3_bucket}/runs/s3-early"
    names = {i.path[len(root) + 1 :] for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))}
    for artifact in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "rayft_run.yaml",
        "metrics.jsonl",
        "summary.json",
        "events.jsonl",
        "loss.png",
    ):
        assert artifact in names, f"{artifact} is not in the bucket: {sorted(names)}"

    rows = [json.loads(line) for line in _read(fs, f"{root}/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    summary = json.loads(_read(fs, f"{root}/summary.json"))
    assert summary["steps"] == 3 and summary["stopped_early"] is True
    assert len(summary["worker_nodes"]) == 2
    events = [json.loads(line) for line in _read(fs, f"{root}/events.jsonl").splitlines()]
    assert [e["event"] for e in events] == ["early_stopped"] and events[0]["step"] == 3

    # keep=1 with keep_best: one checkpoint left (of steps 1 and 2; step 3 stopped), the one of lowest eval/loss
    checkpoints = sorted(
        n.split("/")[0] for n in names if n.startswith("checkpoint_") and n.endswith("trainer_state.json")
    )
    assert len(checkpoints) == 1
    best = summary["best_checkpoint"]
    assert best["path"] == f"s3://{root}/{checkpoints[0]}"
    kept_step = json.loads(_read(fs, f"{root}/{checkpoints[0]}/trainer_state.json"))["step"]
    by_step = {r["step"]: r["eval/loss"] for r in rows}
    assert kept_step in (1, 2) and best["eval_loss"] == pytest.approx(by_step[kept_step])
    assert by_step[kept_step] == min(by_step[1], by_step[2])


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs: a real filesystem that really fills (mounting needs root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN); the full-disk case cannot be staged here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill_after_first_checkpoint(out: Path, filler: Path, timeout: float = 240) -> None:
    """Once Ray Train has registered a checkpoint, fill the disk to the last byte."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        snapshot = out / "checkpoint_manager_snapshot.json"
        if snapshot.exists() and "checkpoint_" in snapshot.read_text():
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    return
        time.sleep(0.05)
    raise AssertionError("no checkpoint was registered in time")


def test_a_disk_that_fills_while_checkpointing_fails_clearly_and_the_earlier_checkpoint_resumes(
    tiny_model, workdir, alpaca_file, small_disk
):
    from rayft.train import train

    steps, every = 9, 3
    run = run_config(
        tiny_model("llama"),
        [{"path": str(alpaca_file), "format": "alpaca"}],
        small_disk,
        "full-disk",
        train={"max_steps": steps, "micro_batch_size": 2, "logging_steps": 1},
        checkpoint={"save_steps": every, "keep": None},
        cluster={"num_workers": 1},
    )
    out, filler = Path(run.output.dir), small_disk / "filler.bin"
    errors: list[Exception] = []

    def attempt():
        try:
            train(run)
        except Exception as e:  # noqa: BLE001 - checked below
            errors.append(e)

    thread = threading.Thread(target=attempt)
    thread.start()
    _fill_after_first_checkpoint(out, filler)
    thread.join(timeout=300)
    assert len(errors) == 1 and isinstance(errors[0], UserInputError), errors
    assert "no space left on the device while writing" in str(errors[0]) and str(out) in str(errors[0])

    # the checkpoint registered before the disk filled is whole: freeing the space, --resume continues from it
    registered = json.loads((out / "checkpoint_manager_snapshot.json").read_text())
    assert "checkpoint_" in json.dumps(registered)
    filler.unlink()
    assert train(run, resume=True) == out
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    resumed = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in resumed if e["event"] == "resumed"] == [every]
    assert json.loads((out / "summary.json").read_text())["resumed_from_step"] == every
    assert (out / "adapter_model.safetensors").is_file()


def test_a_storage_path_that_cannot_be_written_stops_before_training(tiny_model, workdir, alpaca_file, tmp_path):
    from rayft.train import train

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    run = run_config(tiny_model("llama"), [{"path": str(alpaca_file), "format": "alpaca"}], blocker / "runs", "x")
    with pytest.raises(RunCheckError, match=r"output.storage_path: cannot write to .*a-file/runs"):
        train(run)

    read_only = tmp_path / "ro"
    read_only.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)], capture_output=True
    ).returncode:
        return  # without root the read-only mount cannot be staged; the case above still ran
    try:
        run = run_config(tiny_model("llama"), [{"path": str(alpaca_file), "format": "alpaca"}], read_only, "x")
        with pytest.raises(RunCheckError, match="output.storage_path: cannot write to .*Read-only file system"):
            train(run)
    finally:
        subprocess.run(["umount", "-l", str(read_only)], check=False)


def test_an_unreachable_cluster_address_fails_at_once(tiny_model, workdir, alpaca_file, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    config = tmp_path / "run.yaml"
    config.write_text(
        json.dumps(
            run_config(tiny_model("llama"), [{"path": str(alpaca_file), "format": "alpaca"}], tmp_path, "x").model_dump(
                mode="json"
            )
        )
    )
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "rayft.cli", "train", str(config)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster answers there" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.time() - started < 60  # ray.init alone retries for minutes
