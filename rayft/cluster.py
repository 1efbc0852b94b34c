"""Joining a Ray cluster: the one named by RAY_ADDRESS, or a local one started on demand."""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

import ray
import ray.data

from rayft_core.config import RunConfig
from rayft_core.errors import UserInputError
from rayft_core.train.memory import decide_checkpointing, this_machine_cores, this_machine_per_worker

if TYPE_CHECKING:
    from rayft_core.model.loader import ModelFacts

logger = logging.getLogger(__name__)


# Ray Train's controller polls its workers every 2 s by default, and a worker's ray.train.report waits
# for that poll: with metrics every step, a 20-step DPO run took 74.5 s instead of 43 s (0.5 s here)
# on 2 cores. On a multi-node cluster set it in the job's runtime_env env_vars likewise.
TRAIN_POLL = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

# Ray Train starts a PreemptionWatcher actor per run to follow node drains (spot reclaims on an autoscaled
# cluster). Nothing drains an embedded local cluster, and the watcher was one more process per run
# (1.5 CPU-seconds of start-up here) that logged an error line at every run: off there, on elsewhere.
# Ray starts its worker processes at niceness 15, below its own daemons and the driver, so that a loaded node
# still answers its heartbeats. On the embedded local cluster the workers are the job itself, and every wakeup
# of a daemon or the driver preempted one of a trainer's threads while the other waited for it: a real model's
# step took 4.60 s at niceness 15 and 4.28 s at 0 (3.84 s in a plain process; SmolLM2-135M LoRA, 2 cores).
WORKER_NICENESS = ("RAY_worker_niceness", "0")
LOCAL_ONLY_ENV = (TRAIN_POLL, ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"), WORKER_NICENESS)


def connect(num_cpus: int | None = None) -> None:
    """ray.init() once per process. Without RAY_ADDRESS an embedded local cluster starts.

    A local cluster declares at least 4 logical CPUs: Ray Data's read and map tasks must find CPUs
    beside the training workers, or the pipeline feeding them starves (seen on 2-core machines).
    """
    if ray.is_initialized():
        return
    # Ray Data's progress bars need a terminal; in logs (CI, `ray job`) they print a status block per second.
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    if not is_local():
        check_reachable(os.environ["RAY_ADDRESS"])
        ray.init(log_to_driver=True)
        return
    cpus = num_cpus or max(os.cpu_count() or 1, 4)
    for name, value in LOCAL_ONLY_ENV:  # before ray.init: the local cluster's processes inherit them
        os.environ.setdefault(name, value)
    ray.init(num_cpus=cpus, log_to_driver=True)
    logger.info("started a local Ray cluster with %d logical CPUs", cpus)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail at once with the address named when nothing answers there: ray.init() itself retries an
    unreachable GCS for minutes with only log warnings (over 2 minutes measured here)."""
    target = address.split("://", 1)[-1].rstrip("/")
    if address == "auto" or ":" not in target:
        return  # "auto" finds the local node's cluster; Ray explains a missing one itself
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        raise UserInputError(
            f"RAY_ADDRESS={address}: no Ray cluster answers there ({e}); check the address and that "
            "the head node is up (`ray status` on it), or unset RAY_ADDRESS to start a local cluster"
        ) from None


def resolve_worker_cpus(run: RunConfig) -> RunConfig:
    """``run`` with cluster.cpus_per_worker auto made a number (see auto_worker_cpus), from the nodes' CPUs less
    those in use now (a Serve app, another run) and those that run beside the workers while they train: a
    stream's tokenizing tasks (one CPU on every node) and RL's rollout engines."""
    if run.cluster.cpus_per_worker != "auto":
        return run
    reserved = run.stage.rollout.num_engines * run.stage.rollout.cpus_per_engine if run.stage.loop == "rl" else 0.0
    in_use = ray.cluster_resources().get("CPU", 0) - ray.available_resources().get("CPU", 0)
    kept = 1.0 if run.data.streaming else 0.0  # a stream's chunks tokenize on their worker's own node: a CPU on each
    nodes = [n["Resources"].get("CPU", 0) - kept for n in ray.nodes() if n["Alive"]]
    resolved = run.model_copy(deep=True)
    resolved.cluster.cpus_per_worker = auto_worker_cpus(nodes, reserved + max(in_use, 0), run.cluster.num_workers)
    return resolved


def resolve_checkpointing(
    run: RunConfig, facts: ModelFacts, use_gpu: bool, share: float = 1.0
) -> tuple[RunConfig, str | None]:
    """``run`` with model.gradient_checkpointing auto decided (rayft_core.train.memory.decide_checkpointing) for
    the memory each worker gets here (CPU workers: ``share`` of it), and why; ``run`` as it is when the user set
    it."""
    if run.model.gradient_checkpointing != "auto":
        return run, None
    budget = _worker_memory(run, use_gpu, share)
    on, why = decide_checkpointing(run, facts.tuned_meta_model, facts.config, use_gpu, budget)
    resolved = run.model_copy(deep=True)
    resolved.model.gradient_checkpointing = on
    return resolved, why


def _worker_memory(run: RunConfig, use_gpu: bool, share: float) -> float | None:
    """The memory one worker may use: on the embedded local cluster this machine's (its GPU's, or its part of the
    host memory); on a remote cluster a CPU worker's part of the smallest node that takes workers (Ray's memory
    resource: what it schedules into; PACK puts as many workers on a node as its CPUs allow), and a GPU's memory
    is not known to the driver (None). CPU workers count on ``share`` of it."""
    if is_local():
        return this_machine_per_worker(run.cluster.num_workers, use_gpu, share)
    if use_gpu:
        return None
    cpus = float(run.cluster.cpus_per_worker)
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= cpus]
    parts = [r.get("memory", 0) / min(run.cluster.num_workers, int(r["CPU"] // cpus)) for r in nodes]
    return share * min(parts) if parts else None


def auto_worker_cpus(node_cpus: list[float], reserved: float, workers: int) -> int:
    """The most whole CPUs per worker such that ``workers`` of them fit on the nodes (``node_cpus``: each node's
    CPUs) once ``reserved`` CPUs are taken from the largest; at least 1 (a cluster too small for even that is
    refused by the resource check that follows)."""
    free = sorted(node_cpus, reverse=True) or [0.0]
    free[0] -= reserved
    fits = [c for c in range(1, int(max(free)) + 1) if sum(int(f // c) for f in free if f > 0) >= workers]
    return max(fits, default=1)


def worker_threads(cpus: float, workers_on_node: int) -> int:
    """A worker's torch threads: its CPUs, but no more than its share of the machine's cores (an embedded local
    cluster declares more logical CPUs than a small machine has cores, and threads beyond them only contend)."""
    return max(1, min(int(cpus), this_machine_cores() // max(workers_on_node, 1)))


def is_local() -> bool:
    """The embedded local cluster (no RAY_ADDRESS): every worker runs on this machine."""
    return not os.environ.get("RAY_ADDRESS")


def tokenize_concurrency() -> int | None:
    """How many tokenizing tasks run at once: on the embedded local cluster, one per core (its logical
    CPUs outnumber the cores, and more tasks than cores measured 12% slower and 0.7 GB heavier on 2
    cores); on a real cluster Ray's own count of CPUs decides (None)."""
    return os.cpu_count() if is_local() else None
