"""Stages ppo and grpo on Ray: the one place that decides where the roles run.

- the learner group: Ray Train workers (DeepSpeed ZeRO), each holding the base once with the policy
  adapter, the value head (PPO) and the reward adapter on it (rayft_core.train.rl_model);
- the rollout group: ``stage.rollout.num_engines`` actors, each a vLLM engine (or transformers generate)
  on the base, with cluster resources of their own (split placement). Rank 0 of the learners sends
  each iteration's prompts to them, split evenly, and the policy adapter after every update.

What the stage itself can check (rewards, reward model, initial adapter) it checks before Ray starts
(rayft_core.train.rl_stage); what needs the cluster is checked here, before any actor starts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

from rayft_core.config import RunConfig
from rayft_core.errors import UserInputError
from rayft_core.infer.rollout import Sampling

logger = logging.getLogger(__name__)


def choose_engine(run: RunConfig, use_gpu: bool) -> str:
    """vllm or hf; 'auto' takes vLLM where it is installed and can run this model here."""
    from rayft_core.infer.vllm_engine import CPU_HEAD_SIZES, head_dim_of, require_vllm

    wanted = run.stage.rollout.engine
    installed = importlib.util.find_spec("vllm") is not None
    head_dim = head_dim_of(json.loads((Path(run.model.name_or_path) / "config.json").read_text()))
    cpu_unsupported = not use_gpu and head_dim not in CPU_HEAD_SIZES
    if wanted == "vllm":
        require_vllm()
        if cpu_unsupported:
            raise UserInputError(
                f"stage.rollout.engine: vLLM's CPU backend takes attention head sizes "
                f"{', '.join(map(str, CPU_HEAD_SIZES))}, and this model's is {head_dim}; use engine hf "
                "or GPUs"
            )
        return "vllm"
    if wanted == "hf":
        return "hf"
    if installed and not cpu_unsupported:
        return "vllm"
    logger.info(
        "rollouts: transformers generate (%s)",
        "vLLM is not installed"
        if not installed
        else f"vLLM's CPU backend does not take this model's head size {head_dim}",
    )
    return "hf"


class RlDriver:
    """What an RL run needs on the driver beside its learners: the checks that need the cluster, the prompts'
    answers checked against the rewards, and the rollout group while the learners train."""

    def __init__(self, run: RunConfig, resources: dict[str, float], use_gpu: bool, pad_token_id: int):
        self.run, self.use_gpu, self.pad_token_id = run, use_gpu, pad_token_id
        self.kind = choose_engine(run, use_gpu)
        _check_resources(run, resources, use_gpu)
        self.group: RolloutGroup | None = None

    def check_data(self, dataset: Any) -> None:
        check_references(self.run, dataset)

    @contextlib.contextmanager
    def start(self) -> Iterator[RolloutGroup]:
        with rollout_group(self.run, self.use_gpu, self.kind, self.pad_token_id) as self.group:
            yield self.group

    def summary(self) -> dict[str, Any]:
        return {"rollouts": {"engine": self.kind, "num_engines": len(self.group.engines) if self.group else 0}}


def _check_resources(run: RunConfig, resources: dict[str, float], use_gpu: bool) -> None:
    """Learners and engines together fit the cluster."""
    st = run.stage
    engines = st.rollout.num_engines
    cpus = run.cluster.num_workers * run.cluster.cpus_per_worker + engines * st.rollout.cpus_per_engine
    if cpus > resources.get("CPU", 0):
        raise UserInputError(
            f"stage.rollout.num_engines: {run.cluster.num_workers} learners x "
            f"{run.cluster.cpus_per_worker:g} CPUs and {engines} engines x {st.rollout.cpus_per_engine} "
            f"CPUs need {cpus:g} CPUs; the cluster has {resources.get('CPU', 0):g}"
        )
    gpus = run.cluster.num_workers * int(use_gpu) + engines * engine_gpus(run, use_gpu)
    if gpus > resources.get("GPU", 0):
        raise UserInputError(
            f"stage.rollout.gpus_per_engine: the learners and engines need {gpus} GPUs; the cluster "
            f"has {resources.get('GPU', 0):g}"
        )


def engine_gpus(run: RunConfig, use_gpu: bool) -> int:
    g = run.stage.rollout.gpus_per_engine
    return (1 if use_gpu else 0) if g == "auto" else g


class RolloutGroup:
    """The engines, as rank 0 of the learners drives them (rayft_core.train.rollout.Rollouts); picklable.

    Each engine runs its calls in the order they were sent, so an adapter sent after a submit applies to the
    submits after it: what asynchronous rollouts rely on (the batch being answered keeps the older policy)."""

    def __init__(self, engines: list[Any], kind: str):
        self.engines, self.kind = engines, kind
        self.loading: list[ray.ObjectRef] = []  # adapter loads not waited for

    def submit(
        self, prompts: list[list[int]], n: int, sampling: Sampling, seed: int, logprobs: bool = False
    ) -> list[ray.ObjectRef]:
        share = -(-len(prompts) // len(self.engines))
        parts = [(i, prompts[i : i + share]) for i in range(0, len(prompts), share)]
        return [e.generate.remote(p, n, sampling, seed + i * n, logprobs) for e, (i, p) in zip(self.engines, parts)]

    def collect(self, handle: list[ray.ObjectRef]) -> list[list[Any]]:
        answers = [answer for part in ray.get(handle) for answer in part]
        ray.get(self.loading)  # loads sent before: done by now, or their failure raised here
        self.loading = []
        return answers

    def load_weights(self, version: int, weights: list[tuple[str, Any]], last: bool) -> float:
        weights_ref = ray.put(weights)  # one group of a full-parameter policy, once in the object store
        return max(ray.get([e.load_weights.remote(version, weights_ref, last) for e in self.engines]))

    def logprobs(self, ids: list[int], start: int) -> list[list[float]]:
        return ray.get([e.logprobs.remote(ids, start) for e in self.engines])

    def load_adapter(self, version: int, files: dict[str, bytes], wait: bool = True) -> float:
        files_ref = ray.put(files)  # one copy in the object store, whatever the number of engines
        loads = [e.load_adapter.remote(version, files_ref) for e in self.engines]
        if not wait:
            self.loading += loads
            return 0.0
        return max(ray.get(loads))


@contextlib.contextmanager
def rollout_group(run: RunConfig, use_gpu: bool, kind: str, pad_token_id: int) -> Iterator[RolloutGroup]:
    """Start ``kind`` engines (all at once), yield them, and end them whatever happens to the run."""
    from rayft_core.infer.rollout import HFRollout, VLLMRollout

    st = run.stage
    # A dead engine is restarted by Ray (on the base alone); the call that found it dead fails the learner group,
    # which Ray Train restarts from its checkpoint (cluster.max_failures), and its first sync sends the adapter.
    options = dict(
        num_cpus=st.rollout.cpus_per_engine, num_gpus=engine_gpus(run, use_gpu), max_restarts=run.cluster.max_failures
    )
    # synchronous rollouts: the learners wait while the engines generate, so the engines take the node's cores
    share = None if st.rollout.mode == "async" or use_gpu else st.rollout.num_engines
    if kind == "vllm":
        rank = st.init_adapter and json.loads((Path(st.init_adapter) / "adapter_config.json").read_text()).get("r")
        rank = (rank or run.tuning.rank) if run.tuning.trains_adapter else None  # None: a full-parameter policy
        actor = ray.remote(**options)(VLLMRollout)
        engines = [
            actor.remote(run.model.name_or_path, rank, run.data.max_seq_len, run.train.seed + i, share)
            for i in range(st.rollout.num_engines)
        ]
    else:
        actor = ray.remote(**options)(HFRollout)
        engines = [
            actor.remote(run.model.name_or_path, pad_token_id, run.train.seed + i, share)
            for i in range(st.rollout.num_engines)
        ]
    logger.info("rollouts: %d %s engine(s)", len(engines), kind)
    try:
        ray.get([e.__ray_ready__.remote() for e in engines])  # an engine that cannot start fails the run here
        yield RolloutGroup(engines, kind)
    finally:
        for e in engines:
            ray.kill(e)


def check_references(run: RunConfig, dataset: Any) -> None:
    """Answers in the prompt data that no reward reads would be silently ignored: refused instead."""
    from rayft_core.train.rewards import Rewards

    if Rewards(run.stage.reward_functions).read_references():
        return
    answered = sum(
        len(b["reference"]) - b["reference"].null_count
        for b in dataset.select_columns(["reference"]).iter_batches(batch_format="pyarrow")
    )
    if answered:
        raise UserInputError(
            f"data.train: {answered} rows have answers, and stage {run.stage.name} generates its own: no reward reads "
            "them (a reward function taking `references` would, e.g. number_match). Give prompts only (alpaca without "
            "output, or conversations that end with the user turn), or a reward that uses them"
        )
