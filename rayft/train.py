"""Launch a run on Ray Train: checks on the driver, the data on Ray Data, DeepSpeed on the workers.

rayft train examples/sft_lora.yaml train.learning_rate=2e-4
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import ray
from ray.train import CheckpointConfig, FailureConfig, ScalingConfig, WorkerGroupError
from ray.train import RunConfig as RayRunConfig
from ray.train.torch import TorchTrainer
from ray.train.v2.api.callback import UserCallback

from rayft import rlhf
from rayft.checks import OVERWRITE_FLAG, check_cluster, check_config
from rayft.cluster import connect, is_local, resolve_checkpointing, resolve_worker_cpus, worker_threads
from rayft.data import RunData, build_run_data
from rayft.hub import pin_hub_datasets
from rayft.stream import WorkerStream
from rayft_core import ownership, storage
from rayft_core.config import RunConfig, dump_config
from rayft_core.data.collate import padding_value
from rayft_core.errors import UserInputError
from rayft_core.model.loader import ModelFacts
from rayft_core.train.outputs import CONFIG_FILE, SUMMARY_FILE, format_summary
from rayft_core.train.plan import TrainPlan, padding_rows, prompts_per_worker

logger = logging.getLogger(__name__)


def _train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker: the engine's loop fed by this worker's shards."""
    import torch
    import transformers

    transformers.logging.disable_progress_bar()
    run = RunConfig.model_validate(config["run"])
    ctx = ray.train.get_context()
    torch.set_num_threads(worker_threads(run.cluster.cpus_per_worker, ctx.get_local_world_size()))
    shards = _Shards(run, config["has_eval"])
    rank = ctx.get_world_rank()
    common = dict(rank=rank, world_size=ctx.get_world_size(), node=ray.get_runtime_context().get_node_id())
    # the latest, after a worker failure or with --resume; else the one a new run starts from (a PBT trial's)
    checkpoint = ray.train.get_checkpoint() or _checkpoint_at(config["start_from"])
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as resume_from:
        plan = TrainPlan(**config["plan"])
        if run.stage.loop == "rl":  # rank 0 drives the rollout engines
            from rayft_core.train.rlhf import rl_worker

            rollouts = config["rollouts"] if rank == 0 else None
            rl_worker(run, plan, shards.epoch, rollouts, _report, resume_from=resume_from, **common)
        else:
            from rayft_core.train.loop import train_worker

            eval_batches = shards.eval if shards.eval_shard is not None else None
            train_worker(
                run,
                plan,
                shards.epoch,
                _report,
                eval_batches=eval_batches,
                resume_from=resume_from,
                stream=shards.stream,
                **common,
            )


def _checkpoint_at(location: str | None) -> ray.train.Checkpoint | None:
    if location is None:
        return None
    fs, path = storage.filesystem(location)
    return ray.train.Checkpoint(path, filesystem=fs)


class _Shards:
    """This worker's shards of the run's datasets, as batches of the stage's columns (streamed rows checked)."""

    def __init__(self, run: RunConfig, has_eval: bool):
        from rayft_core.data.report import StreamChecker
        from rayft_core.model.loader import load_tokenizer
        from rayft_core.train.stages import STAGES

        self.run = run
        self.eval_shard = ray.train.get_dataset_shard("eval") if has_eval else None
        streaming = run.data.streaming
        self.check = (
            StreamChecker(run.data.max_bad_fraction, load_tokenizer(run.model).pad_token_id) if streaming else None
        )
        extra = ["position_ids"] if run.packing else []
        self.columns = [*STAGES[run.stage.name].columns, *extra, *(["error"] if streaming else [])]
        # a stream is read by each worker from its own share, from where its checkpoint says it stood
        ctx, columns = ray.train.get_context(), [*STAGES[run.stage.name].columns, *extra]
        beside = ctx.get_local_world_size() * run.cluster.cpus_per_worker  # the CPUs this node's workers take
        self.stream = (
            WorkerStream(run, ctx.get_world_rank(), ctx.get_world_size(), columns, beside) if streaming else None
        )
        self.shard = None if self.stream else ray.train.get_dataset_shard("train")

    def epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        from rayft_core.train.plan import batch_size_per_worker

        if self.stream is not None:
            return self._checked(self.stream.epoch(epoch))
        shuffle = self.run.data.shuffle
        batches = self.shard.iter_batches(
            batch_size=batch_size_per_worker(self.run),
            batch_format="numpy",
            drop_last=False,  # every batch is full: see _padded
            local_shuffle_buffer_size=256 if shuffle else None,
            local_shuffle_seed=self.run.train.seed + epoch if shuffle else None,
        )
        return self._checked(batches)

    def eval(self) -> Iterator[dict[str, Any]]:
        return self._checked(
            self.eval_shard.iter_batches(batch_size=self.run.train.micro_batch_size, batch_format="numpy")
        )

    def _checked(self, batches: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for batch in batches:
            batch = {k: batch[k] for k in self.columns}
            yield self.check(batch) if self.check else batch


def _report(metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
    """A worker's record to Ray Train; a checkpoint is uploaded into the run's directory in storage_path, then
    the local copy is deleted."""
    if checkpoint_dir is None:
        ray.train.report(metrics)
        return
    checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir)
    ray.train.report(metrics, checkpoint=checkpoint, delete_local_checkpoint_after_upload=True)


class _Progress(UserCallback):
    """A progress bar of optimizer steps with the latest loss, drawn on the driver (tqdm_ray)."""

    def __init__(self, total_steps: int, name: str):
        self.total_steps, self.name = total_steps, name
        self.bar = None

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        from ray.experimental.tqdm_ray import tqdm

        if self.bar is None:
            self.bar = tqdm(total=self.total_steps, desc=f"train {self.name}", unit="step")
        m = metrics[0]
        if "rl/reward" in m:
            kl = f" kl={m['rl/kl']:.4f}" if "rl/kl" in m else ""
            self.bar.set_description(f"train {self.name} reward={m['rl/reward']:.4f}{kl}")
        elif "train/loss" in m:
            self.bar.set_description(f"train {self.name} loss={m['train/loss']:.4f} tok/s={m['perf/tokens_per_s']:.0f}")
        self.bar.update(m["step"] - self.bar.n)
        if m["step"] >= self.total_steps:
            self.bar.close()


def train(
    run: RunConfig,
    resume: bool = False,
    callbacks: list[UserCallback] | None = None,
    progress: bool = True,
    memory_share: float = 1.0,
    start_from: str | None = None,
) -> Path | str:
    """Run one training job to completion; return the run's directory (a Path, or its URI).

    resume: continue the run in storage_path/name from its latest checkpoint (the same config).
    start_from: a new run that starts from this checkpoint of another run (a PBT trial's), with its own config.
    callbacks: more Ray Train callbacks (a sweep's trial forwards reports to Tune); progress: the step bar.
    memory_share: the part of the CPU workers' memory this run may count on (a sweep's trials run side by side).
    """
    run = run.with_absolute_paths()
    model = ModelFacts(run)
    check_config(run, resume=resume, model=model)  # before Ray starts: a bad run costs no cluster
    connect()
    config_text = dump_config(run)  # as the user wrote it (cpus_per_worker: auto stays auto for the next cluster)
    run = resolve_worker_cpus(run)
    resources = ray.cluster_resources()
    use_gpu = resources.get("GPU", 0) > 0 if run.cluster.use_gpu == "auto" else bool(run.cluster.use_gpu)
    check_cluster(run, resources, use_gpu)
    run, checkpointing = resolve_checkpointing(run, model, use_gpu, memory_share)
    driver = (
        rlhf.RlDriver(run, resources, use_gpu, model.tokenizer.pad_token_id)
        if run.stage.loop == "rl"
        else _SupervisedDriver()
    )

    if run.data.streaming:  # every worker, and every restart of one, reads a hub dataset at the same commit
        run = pin_hub_datasets(run)
    data = build_run_data(run)
    driver.check_data(data.train)
    plan = TrainPlan.for_data(run, data.train_rows)
    logger.info("plan: %s", _describe(run, plan, data.train_rows, checkpointing))
    epoch = _epoch_summary(run, data)
    if run.stage.loop == "supervised":
        data = _padded(data, run, model.tokenizer.pad_token_id)
    out = run.output.dir
    if not resume:  # only now: a run that fails its checks replaces nothing (an earlier run of rayft's, at most)
        ownership.claim(out, ownership.RUN, run.output.overwrite, OVERWRITE_FLAG)
    storage.write_text(storage.join(out, CONFIG_FILE), config_text)  # first: `--resume` compares against it

    with driver.start() as rollouts:
        result = _fit(run, data, plan, use_gpu, callbacks, progress, rollouts, start_from)
    summary = _finish_summary(
        run,
        result,
        {
            **epoch,
            "cpus_per_worker": run.cluster.cpus_per_worker,
            "gradient_checkpointing": run.model.gradient_checkpointing,
            **driver.summary(),
        },
    )
    if summary:
        logger.info("run %s finished:\n%s", run.output.name, format_summary(summary))
    return out if storage.is_uri(out) else Path(out)


def _describe(run: RunConfig, plan: TrainPlan, rows: int | None, checkpointing: str | None) -> str:
    """The plan line: steps, epochs, a worker's CPUs and threads, gradient checkpointing (and why, where rayft
    decided it), and what the last step of an epoch holds."""
    cpus = run.cluster.cpus_per_worker
    threads = worker_threads(cpus, run.cluster.num_workers) if is_local() else int(cpus)
    on = "on" if run.model.checkpoints_activations else "off"
    line = (
        f"{plan.total_steps} steps over {plan.num_epochs} epoch(s), global batch {run.global_batch_size}, "
        f"{_count(cpus, 'CPU')} and {_count(threads, 'torch thread')} per worker, gradient checkpointing {on}"
        + (f" ({checkpointing})" if checkpointing else "")
    )
    if rows is None:
        return line + " (streamed: epochs end where the stream does)"
    if run.stage.loop == "rl":
        per_iteration = prompts_per_worker(run) * run.cluster.num_workers
        left = rows - plan.micro_batches_per_epoch * per_iteration
        return line + (
            f"; {left} of {rows} prompts are left out of each epoch (an iteration takes {per_iteration})"
            if left
            else ""
        )
    padding = padding_rows(rows, run.global_batch_size)
    if padding:
        last = run.global_batch_size - padding
        line += f"; the last step of each epoch holds {_count(last, 'row')} and {_count(padding, 'masked padding row')}"
    return line


def _epoch_summary(run: RunConfig, data: RunData) -> dict[str, Any]:
    """What an epoch of a supervised run holds, for summary.json: the tokens a run trains are its epochs times
    these (unless it stops early or max_steps ends it inside an epoch)."""
    if data.train_rows is None or run.stage.loop != "supervised":
        return {}
    rows = data.train_rows
    # summed here, not with Dataset.sum: its shuffle tasks cannot be placed inside a sweep trial's placement group
    batches = data.train.select_columns(["num_tokens"]).iter_batches(batch_format="numpy", batch_size=None)
    tokens = sum(int(b["num_tokens"].sum()) for b in batches)
    return {"epoch": {"rows": rows, "tokens": tokens, "padding_rows": padding_rows(rows, run.global_batch_size)}}


def _count(n: float, noun: str) -> str:
    return f"{n:g} {noun}{'' if n == 1 else 's'}"


def _padded(data: RunData, run: RunConfig, pad_token_id: int) -> RunData:
    """The supervised datasets with masked padding rows (rayft_core.train.plan.padding_rows) appended, so Ray
    splits them among the workers without a remainder and every row trains (or is evaluated) once an epoch."""
    if data.train_rows is None:  # a stream: each worker's pass ends where its share of the files does
        return data
    train = _append_padding(data.train, padding_rows(data.train_rows, run.global_batch_size), pad_token_id)
    evaluation = data.eval
    if evaluation is not None and data.eval_rows is not None:
        evaluation = _append_padding(evaluation, padding_rows(data.eval_rows, run.cluster.num_workers), pad_token_id)
    return dataclasses.replace(data, train=train, eval=evaluation)


def _append_padding(ds: Any, count: int, pad_token_id: int) -> Any:
    if count == 0:
        return ds
    import pyarrow as pa

    schema = ds.schema().base_schema
    table = pa.table(
        {f.name: pa.array([padding_value(f.name, pad_token_id)] * count, f.type) for f in schema}, schema=schema
    )
    return ds.union(ray.data.from_arrow(table)).materialize()


class _SupervisedDriver:
    """The supervised loop needs nothing on the driver beside its workers (see rlhf.RlDriver for what RL needs)."""

    def check_data(self, dataset: Any) -> None:
        pass

    def start(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def summary(self) -> dict[str, Any]:
        return {}


def _fit(
    run: RunConfig,
    data: Any,
    plan: TrainPlan,
    use_gpu: bool,
    callbacks: list[UserCallback] | None,
    progress: bool,
    rollouts: rlhf.RolloutGroup | None,
    start_from: str | None,
) -> Any:
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={
            "run": run.model_dump(mode="json"),
            "start_from": start_from,
            "plan": plan.__dict__,
            "has_eval": data.eval is not None,
            "rollouts": rollouts,
        },
        scaling_config=ScalingConfig(
            num_workers=run.cluster.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": run.cluster.cpus_per_worker},
            placement_strategy=run.cluster.placement_strategy,
        ),
        # Ray Train keeps its checkpoint list in the run's directory: a run started again under the same
        # name and storage_path (--resume) hands the workers the latest checkpoint, as after a failure.
        run_config=RayRunConfig(
            name=run.output.name,
            storage_path=run.output.storage_path,
            failure_config=FailureConfig(max_failures=run.cluster.max_failures),
            checkpoint_config=_checkpoint_config(run),
            callbacks=[*(callbacks or []), *([_Progress(plan.total_steps, run.output.name)] if progress else [])],
        ),
        datasets={
            **({"train": data.train} if data.train is not None else {}),  # a stream: each worker reads its own
            **({"eval": data.eval} if data.eval is not None else {}),
        },
    )
    try:
        return trainer.fit()
    except WorkerGroupError as e:
        user_error = _user_error(e)
        if user_error is None:
            raise
        raise user_error from e


def _user_error(e: WorkerGroupError) -> UserInputError | None:
    """A worker's bad-input error (data ran out, disk full, ...) as the driver's, so the CLI prints it plainly."""
    for rank, failure in sorted(e.worker_failures.items()):
        if isinstance(failure, UserInputError):
            return UserInputError(f"worker {rank}: {failure}")
    return None


def _finish_summary(run: RunConfig, result: Any, extra: dict[str, Any]) -> dict[str, Any] | None:
    """summary.json as rank 0 wrote it, plus what only the driver knows: the best checkpoint (keep_best),
    what an epoch holds and the rollout engines (``extra``)."""
    location = storage.join(run.output.dir, SUMMARY_FILE)
    text = storage.read_text(location)
    if text is None:
        return None
    summary = {**json.loads(text), **extra}
    if extra:
        storage.write_text(location, json.dumps(summary, indent=2) + "\n")
    scored = [(m["eval/loss"], c) for c, m in (result.best_checkpoints or []) if "eval/loss" in m]
    if run.checkpoint.keep_best and scored:
        loss, checkpoint = min(scored, key=lambda x: x[0])
        summary["best_checkpoint"] = {"path": checkpoint_uri(checkpoint), "eval_loss": loss}
        storage.write_text(location, json.dumps(summary, indent=2) + "\n")
    return summary


def checkpoint_uri(checkpoint: Any) -> str:
    """A persisted checkpoint's location as the user named its storage (Ray keeps the scheme in the filesystem)."""
    scheme = getattr(checkpoint.filesystem, "type_name", "local")
    return checkpoint.path if scheme == "local" else f"{scheme}://{checkpoint.path}"


def _checkpoint_config(run: RunConfig) -> CheckpointConfig:
    c = run.checkpoint
    if c.keep_best:
        return CheckpointConfig(
            num_to_keep=c.keep, checkpoint_score_attribute="eval/loss", checkpoint_score_order="min"
        )
    return CheckpointConfig(num_to_keep=c.keep)
