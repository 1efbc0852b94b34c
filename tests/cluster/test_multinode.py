"""A real 2-node Ray cluster on this machine and a job submitted to it the way a user would.

cluster/local.sh starts a head and a worker node (two raylets, each with its own temp dir and ports,
token authentication on); `rayft submit` ships this checkout and runs jobs/full_zero3.yaml on a tiny
model: 2 workers under ZeRO-3, placed one per node (SPREAD), fed by a stream whose chunks Ray tasks tokenize on
both nodes. The cluster is separate from the test session's own (tests/conftest.py ray_cluster), which this test
does not use.
"""

from __future__ import annotations

import collections
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from rayft_core.train.outputs import read_metrics

REPO = Path(__file__).resolve().parents[2]
LOCAL_SH = REPO / "cluster" / "local.sh"
pytestmark = pytest.mark.slow


@dataclass
class Cluster:
    root: Path  # the nodes' temp dirs are root/cluster/node0 (head) and root/cluster/node1
    address: str  # the job server (dashboard)
    token: str
    env: dict  # what a client on this machine needs: PATH to ray/rayft, the token's file

    def alive_nodes(self) -> list[str]:
        r = requests.get(f"{self.address}/api/v0/nodes", headers={"Authorization": f"Bearer {self.token}"}, timeout=10)
        r.raise_for_status()
        return [n["node_id"] for n in r.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def nodes_that_ran(self, task: str) -> dict[str, int]:
        """How many of the tasks named ``task`` each node ran (Ray's State API, as `ray list tasks` reads it)."""
        r = requests.get(
            f"{self.address}/api/v0/tasks",
            params={"filter_keys": "name", "filter_predicates": "=", "filter_values": task, "limit": 10000},
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )
        r.raise_for_status()
        ran = collections.Counter(t["node_id"] for t in r.json()["data"]["result"]["result"] if t.get("node_id"))
        return dict(ran)

    def submit(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        """`rayft submit jobs/full_zero3.yaml ARGS` from this checkout, as its own process."""
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rayft.cli",
                "submit",
                "jobs/full_zero3.yaml",
                *args,
                "--address",
                self.address,
                "--runtime-env",
                str(self.root / "runtime_env.yaml"),
            ],
            cwd=REPO,
            env={**self.env, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'core'}", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def _free_port_block(size: int) -> int:
    """A first port with the next `size` ports free (cluster/local.sh's layout), above Ray's default worker
    ports (10002-19999) and below the ephemeral ones (32768-), so nothing else on the machine takes them."""

    def free(port: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind(("", port))
                return True
            except OSError:
                return False

    blocks = list(range(20000, 32000 - size, size))
    start = secrets.randbelow(len(blocks))  # a random block first: two sessions at once rarely try the same
    for first in blocks[start:] + blocks[:start]:
        if all(free(p) for p in range(first, first + size)):
            return first
    raise RuntimeError("no block of free ports for the test cluster")


@pytest.fixture(scope="module")
def two_nodes():
    root = Path(
        tempfile.mkdtemp(prefix="rft-", dir="/tmp")
    )  # short: Ray's unix sockets live under it (108 chars at most)
    token = secrets.token_hex(32)
    (root / "auth_token").write_text(token)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_TOKEN_PATH": str(root / "auth_token"),
    }
    for var in ("PYTHONPATH", "RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE"):  # the job must run the code it ships
        env.pop(var, None)
    # jobs/runtime_env.yaml without its pip pins: Ray would copy this whole virtualenv (GBs) per node to
    # install them. test_submit.py checks that the pins equal the installed versions.
    runtime_env = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    del runtime_env["pip"]
    (root / "runtime_env.yaml").write_text(yaml.safe_dump(runtime_env))
    port = _free_port_block(300)  # GCS, node services and worker ports of a head and one worker node
    where = ["--dir", str(root / "cluster")]
    try:
        subprocess.run(
            [
                LOCAL_SH,
                "start",
                "--workers",
                "1",
                "--cpus",
                "3",
                "--port",
                str(port),
                "--dashboard-port",
                str(port + 5),
                "--object-store-mb",
                "512",
                *where,
            ],
            env=env,
            check=True,
            timeout=400,
        )
        cluster = Cluster(root, f"http://127.0.0.1:{port + 5}", token, env)
        for _ in range(60):  # `ray start` returns once a node runs; wait until the head counts both
            if len(cluster.alive_nodes()) == 2:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the head counts {len(cluster.alive_nodes())} alive nodes, not 2")
        yield cluster
    finally:
        subprocess.run([LOCAL_SH, "stop", *where], env=env, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def test_zero3_job_on_two_nodes(two_nodes: Cluster, tiny_model, alpaca_file):
    cluster = two_nodes
    assert (
        requests.get(f"{cluster.address}/api/version", timeout=10).status_code == 401
    )  # auth is on: no token, no entry
    storage = cluster.root / "shared"  # stands in for storage every node mounts
    # streamed: each worker's rows are tokenized by Ray Data tasks, which should run on both nodes' CPUs
    rows = json.loads(alpaca_file.read_text())
    data = cluster.root / "rows.jsonl"
    data.write_text("".join(json.dumps({**r, "input": f"#{i}"}) + "\n" for i, r in enumerate(rows * 30)))
    overrides = [
        f"model.name_or_path={tiny_model('llama')}",
        f"data.train=[{{path: {data}, format: alpaca}}]",
        "data.streaming=true",
        "data.max_seq_len=64",
        "train.max_steps=3",
        "train.micro_batch_size=4",
        "train.gradient_accumulation_steps=1",
        "train.learning_rate=5e-3",
        "deepspeed.zero_stage=3",
        "cluster.num_workers=2",
        "cluster.placement_strategy=SPREAD",
        # 2 CPUs beside each worker on its 3-CPU node for the stream's tasks. (auto would give each worker 2 and keep
        # 1; but both nodes here have one IP, so Ray Train counts 2 local workers per node, and rayft, seeing no CPU
        # to spare, would place the tasks SPREAD instead of on each worker's node, which a real cluster does not do)
        "cluster.cpus_per_worker=1",
        "cluster.max_failures=0",
        f"output.storage_path={storage}",
        "output.name=multinode",
    ]
    # a wrong token is refused before anything is submitted
    wrong = cluster.submit(env={"RAY_AUTH_TOKEN": "not-the-token"})
    assert wrong.wait(60) == 2 and "rejected the token sent" in wrong.communicate()[1]
    # a job whose driver fails makes `rayft submit` fail too (run beside the real one, to save the wait)
    failing = cluster.submit(
        "model.name_or_path=/no/such/model", f"output.storage_path={storage}", "output.name=failing"
    )
    started = time.monotonic()
    proc = cluster.submit(*overrides)
    stdout, stderr = proc.communicate(timeout=600)
    logs = stdout[-4000:] + stderr[-4000:]
    assert proc.returncode == 0, logs
    job_id = re.search(r"submitted job (\S+) to ", stdout).group(1)
    assert f"job {job_id} SUCCEEDED" in stdout, logs
    print(f"job {job_id}: {time.monotonic() - started:.0f} s from submit to its end")
    failed_out, failed_err = failing.communicate(timeout=120)
    assert failing.returncode == 1, failed_out[-2000:] + failed_err[-2000:]
    assert "has no config.json" in failed_out and re.search(r"job \S+ FAILED: `rayft train` exited with 2", failed_err)

    # both nodes trained: the summary names the Ray node of each worker, and they are this cluster's two nodes
    out = storage / "multinode"
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["worker_nodes"]) == sorted(cluster.alive_nodes()), summary
    assert summary["steps"] == 3
    # the stream's chunks were tokenized on both nodes, each worker's on its own (Ray's record of every task;
    # summary.json counts the chunks trained on, which a 3-step run takes from the first few tasks only)
    tokenized_on = summary["stream_chunks_tokenized_per_node"]
    ran_on = cluster.nodes_that_ran("_encode_chunk")
    print(f"stream chunks trained on, per node where tokenized: {tokenized_on}; tokenizing tasks per node: {ran_on}")
    assert set(tokenized_on) <= set(ran_on) and sorted(ran_on) == sorted(cluster.alive_nodes()), (ran_on, summary)

    # the artifacts are in storage_path, whichever node rank 0 ran on, and on neither node's own disk
    assert {"model.safetensors", "config.json", "tokenizer.json", "rayft_run.yaml", "metrics.jsonl", "loss.png"} <= {
        p.name for p in out.iterdir()
    }
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
    nodes_dir = cluster.root / "cluster"
    assert not [p for p in nodes_dir.rglob("*") if p.name in ("model.safetensors", "metrics.jsonl", "summary.json")]

    # this checkout reached the worker node, without what the runtime_env excludes
    shipped = [
        p
        for p in (nodes_dir / "node1").glob("session_latest/runtime_resources/working_dir_files/_ray_pkg_*")
        if p.is_dir()
    ]
    assert len(shipped) == 1 and (shipped[0] / "rayft" / "submit.py").is_file() and (shipped[0] / "jobs").is_dir()
    assert not [p for p in shipped[0].rglob("*") if p.name in (".git", ".venv", "outputs")]
