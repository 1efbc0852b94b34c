"""The Runs tab's server side: runs launched as Ray jobs, and every run in the storage folder joined into one table.

A launch is `rayft train run.yaml` submitted through Ray's job API (as `ray job submit` does), with the config
written into a fresh folder that Ray uploads as the job's working directory: the run belongs to the cluster, so it
outlives the page and the `rayft ui` process. Runs started from the command line appear too: the table is built
from the jobs the cluster knows and the run folders (`rayft_run.yaml` in them) under the storage folder.
"""

from __future__ import annotations

import json
import re
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rayft_core import ownership
from rayft_core.config import dump_config, validate_config
from rayft_core.errors import UserInputError
from rayft_core.train.outputs import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE

RUN_KEY = "rayft_output"  # job metadata: the run's output folder, which joins a job to its run
KIND_KEY = "rayft_kind"  # ... and what the job does there: run (rayft train), sweep (rayft tune), serve
SWEEP_FILE = ownership.SWEEP.markers[0]  # a sweep's run and space, written first
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class Board:
    address: str  # the cluster's job server (its dashboard), e.g. http://127.0.0.1:8265
    storage: Path  # the folder whose runs the table lists (the runs' output.storage_path)
    command: str = "rayft"  # how the job's shell starts rayft on the cluster (the UI's own Python on a local one)
    checked: bool = True  # check a run as `rayft config validate` does before launching it (off: schema only)
    remote: bool = False  # a cluster elsewhere: its token is sent (rayft.submit.connect), as `rayft submit` does
    _client: Any = field(default=None, repr=False)

    @property
    def client(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            from rayft.submit import check_reachable, connect

            if self.remote:
                check_reachable(self.address)
            self._client = connect(self.address) if self.remote else JobSubmissionClient(self.address)
        return self._client

    def launch(self, config: dict, resume: bool = False) -> dict[str, str]:
        """Submit the run CONFIG (a mapping, as the form builds it) as a Ray job: `rayft train`, or `rayft tune` when
        it has a tune section; its job id and output folder."""
        run = validate_config(config).with_absolute_paths()  # a ConfigError names each bad key
        kind = "sweep" if run.tune else "run"
        if self.checked:
            from rayft.checks import check_config

            # what `rayft train` / `tune` would refuse, refused before anything starts
            check_config(run, resume=resume, output=ownership.SWEEP if run.tune else ownership.RUN)
        command = f"{'tune' if run.tune else 'train'} run.yaml" + (" --resume" if resume else "")
        return self._submit(command, run.output.dir, kind, {"run.yaml": dump_config(run)})

    def serve(self, model: str) -> dict[str, str]:
        """`rayft serve --model MODEL` as a Ray job: the OpenAI API on the cluster's Serve until the job is stopped."""
        if not (Path(model) / CONFIG_FILE).exists():
            raise UserInputError(f"{model}: no {CONFIG_FILE}, so no rayft run to serve there")
        return self._submit(f"serve --model {shlex.quote(str(Path(model).absolute()))}", model, "serve", {})

    def _submit(self, command: str, output: str, kind: str, files: dict[str, str]) -> dict[str, str]:
        # the job's working dir: a folder of its own, uploaded at submission, gone with the context
        with tempfile.TemporaryDirectory(prefix="rayft-ui-job-") as folder:
            for name, text in files.items():
                (Path(folder) / name).write_text(text)
            job = self.client.submit_job(
                entrypoint=f"{self.command} {command}",
                runtime_env={"working_dir": folder},
                metadata={RUN_KEY: output, KIND_KEY: kind},
            )
        return {"job_id": job, "output": output, "kind": kind}

    def resume(self, output: str) -> dict[str, str]:
        """Launch the run or sweep in OUTPUT again from its last checkpoints, with the config it started with."""
        text = read_or_none(Path(output) / SWEEP_FILE) or read_or_none(Path(output) / CONFIG_FILE)
        if text is None:
            raise UserInputError(f"{output}: no {CONFIG_FILE} or {SWEEP_FILE}, so no rayft run to resume there")
        return self.launch(yaml.safe_load(text), resume=True)

    def stop(self, job_id: str) -> bool:
        return self.client.stop_job(job_id)

    def logs(self, job_id: str) -> str:
        return ANSI.sub("", self.client.get_job_logs(job_id))  # progress bars' colours are for terminals

    def runs(self) -> list[dict[str, Any]]:
        """One row per run, sweep and served model: from its latest job when it has one, else from its folder (a
        run's or a sweep's under the storage folder, command-line ones included); newest first."""
        jobs: dict[tuple[str, str], Any] = {}
        for job in sorted(self.client.list_jobs(), key=lambda j: j.start_time or 0):
            meta = job.metadata or {}
            if meta.get(RUN_KEY):
                jobs[meta[RUN_KEY], meta.get(KIND_KEY, "run")] = job  # the latest job of each
        folders = set()
        if self.storage.is_dir():
            folders |= {(str(p.parent), "run") for p in self.storage.glob(f"*/{CONFIG_FILE}")}
            folders |= {(str(p.parent), "sweep") for p in self.storage.glob(f"*/{SWEEP_FILE}")}
        rows = [run_row(output, kind, jobs.get((output, kind))) for output, kind in folders | set(jobs)]
        return sorted(rows, key=lambda r: r["start"] or 0, reverse=True)


def read_or_none(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def metrics(output: str, tail_bytes: int | None = None) -> list[dict[str, Any]]:
    """The run's metrics.jsonl rows so far (a line being written is left for the next read); with ``tail_bytes``,
    only the whole rows within the file's last that many bytes (the runs table, read every 2 s, needs the last)."""
    try:
        with open(Path(output) / METRICS_FILE, "rb") as f:
            size = f.seek(0, 2)
            start = max(size - tail_bytes, 0) if tail_bytes else 0
            f.seek(start)
            lines = f.read().decode("utf-8", errors="replace").splitlines()[1 if start else 0 :]  # cut by the seek
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def run_row(output: str, kind: str, job: Any) -> dict[str, Any]:
    history = metrics(output, tail_bytes=64 * 1024)
    last = next((r for r in reversed(history) if "train/loss" in r), {})
    summary = json.loads(read_or_none(Path(output) / SUMMARY_FILE) or "null")
    folder = Path(output)
    if job is not None:
        state = job.status.value if hasattr(job.status, "value") else str(job.status)
        start = job.start_time / 1000 if job.start_time else None
        end = job.end_time / 1000 if job.end_time else None
    else:
        state = "FINISHED" if summary is not None else "INCOMPLETE"  # started elsewhere: its folder is all there is
        config = folder / (SWEEP_FILE if kind == "sweep" else CONFIG_FILE)
        start = config.stat().st_mtime if config.exists() else None
        end = (folder / SUMMARY_FILE).stat().st_mtime if summary is not None else None
    running = job is not None and state not in TERMINAL
    return {
        "output": output,
        "name": folder.name,
        "kind": kind,
        "job_id": job.submission_id if job is not None else None,
        "state": state,
        "step": history[-1]["step"] if history else None,
        "loss": last.get("train/loss"),
        "tokens_per_s": last.get("perf/tokens_per_s"),
        "start": start,
        "duration": ((time.time() if running else end or start) - start) if start else None,
        "message": job.message if job is not None and state == "FAILED" else None,
        "resumable": kind != "serve" and any((folder / f).exists() for f in (CONFIG_FILE, SWEEP_FILE)) and not running,
    }
