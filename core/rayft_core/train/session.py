"""The worker session: what every training loop shares on a worker, in the setup / train / cleanup shape.

    session = WorkerSession(run, plan, report, rank, world_size, resume_from, node)
    session.setup(stage)        # seed, device, tokenizer, model, DeepSpeed engine, run directory, resume, trackers
    with session:               # cleanup: the trackers close whatever happens
        for rows in session.batches(epoch_batches):
            ...                 # the loop's own work: a batch becomes a loss (train.loop), an RL iteration (train.rlhf)
            session.end_step(metrics)   # the log / save cadence: metrics.jsonl, trackers, report, checkpoints
    session.finish()            # summary.json and the trained model

It knows nothing of Ray: the cluster layer hands it ``report`` (and the loops their batches), so the same
session runs under Ray Train or in a plain process.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from rayft_core import schedule, storage
from rayft_core.config import RunConfig
from rayft_core.errors import UserInputError
from rayft_core.model.adapters import count_parameters
from rayft_core.model.loader import load_tokenizer, resolve_dtype
from rayft_core.model.shards import save_partitioned
from rayft_core.model.zero3 import build_partitioned, mark_zero3_leaves
from rayft_core.train import hyperparameters, outputs, sequence_parallel
from rayft_core.train.checkpoint import (
    TrainerState,
    load_checkpoint,
    load_stream_position,
    save_checkpoint,
    seed_everything,
)
from rayft_core.train.deepspeed_config import build_deepspeed_config
from rayft_core.train.optim import build_optimizer, build_scheduler
from rayft_core.train.plan import TrainPlan
from rayft_core.train.stage import Stage
from rayft_core.train.tracking import Trackers

logger = logging.getLogger(__name__)

Report = Callable[..., None]  # report(metrics, checkpoint_dir=None), called by every rank at the same steps


_END = object()  # the end of an iterator, for next()


class WorkerSession:
    """One worker's training run. ``report(metrics, checkpoint_dir=None)`` hands each record (and, with a
    checkpoint_dir, this rank's part of a checkpoint) to the cluster layer. ``resume_from``: a checkpoint
    directory (every rank's files) to continue from. ``node``: which machine this worker runs on, for the
    summary (default: the host name)."""

    def __init__(
        self,
        run: RunConfig,
        plan: TrainPlan,
        report: Report,
        rank: int,
        world_size: int,
        resume_from: str | Path | None = None,
        node: str | None = None,
    ):
        self.run, self.plan, self.report, self.rank, self.world_size = run, plan, report, rank, world_size
        self.resume_from, self.node = resume_from, node or socket.gethostname()
        self.step = 0  # steps done: optimizer steps, or RL iterations
        self.epoch = self.index = 0  # where the batch in progress is: its epoch and its index in the epoch
        self.tokens = 0  # tokens this worker trained on, for the summary
        self.data_wait = 0.0  # seconds this worker waited for its batches (a starved input pipeline shows here)
        self._wait_reported = 0.0
        self.stop: dict[str, Any] | None = None  # why training stopped early
        self.stage_state: Callable[[], dict[str, Any]] = dict  # what the stage carries over in a checkpoint
        self.stream: Any = None  # a stream that keeps its own position (follow_stream)

    # ----------------------------------------------------------------------------------------- setup

    def setup(self, stage: Stage) -> None:
        run = self.run
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed otherwise probes for CUDA and fails
        try:
            import deepspeed
        except ImportError:
            raise ImportError("training needs DeepSpeed: pip install 'rayft[deepspeed]'") from None

        seed_everything(run.train.seed)
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        self.tokenizer = load_tokenizer(run.model)
        self.ds_config = build_deepspeed_config(run, resolve_dtype(run.model.dtype), self.world_size)
        # Under ZeRO-3 no worker holds the whole model, even while it is built.
        self.model = build_partitioned(lambda: stage.build_model(run, self.tokenizer), self.ds_config)
        mpu = sequence_parallel.register(run, self.model) if run.cluster.sequence_parallel_size > 1 else None
        self.split = sequence_parallel.SequenceSplit(mpu, run.train.micro_batch_size) if mpu else None
        self.averaged_over = _gradient_average(self.ds_config, self.world_size, run.cluster.sequence_parallel_size)
        if run.deepspeed.zero_stage == 3:
            mark_zero3_leaves(self.model)  # MoE blocks gather as one: no rank waits on an expert it skipped
        trainable, total = count_parameters(self.model)
        if self.rank == 0:
            logger.info(
                "trainable parameters: %s of %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total
            )
        optimizer = None if "optimizer" in self.ds_config else build_optimizer(self.model, run)
        self.scheduler_steps = stage.scheduler_steps(run, self.plan.total_steps)
        scheduler = build_scheduler(optimizer, run, self.scheduler_steps) if optimizer else None
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=self.model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=self.ds_config,
            mpu=mpu,
            dist_init_required=False,
        )
        self.engine.train()
        if self.world_size == 1 and not run.deepspeed.zero_stage:
            # One worker has nothing to average, but DeepSpeed's ZeRO-0 still copies every gradient through a
            # flat bucket and a one-rank all-reduce after each backward (0.15 s a step for a 135M model on CPU).
            self.engine.enable_backward_allreduce = False

        resumed = self.resume_from is not None
        self.out = self._open_run_dir(resumed) if self.rank == 0 else None
        self.state = load_checkpoint(self.engine, self.resume_from, run, self.out) if resumed else TrainerState()
        self.step = self.first_step = self.state.step
        if resumed or run.train.schedule:  # the config's values, not those a checkpoint brought back
            hyperparameters.apply(self.engine, schedule.at_step(run, self.step), self.scheduler_steps)
        self.lr = self._learning_rate()  # of the next step: train/lr reports the rate each step trained with
        self.trackers = Trackers(run, self.out, resumed=resumed) if self.rank == 0 else None
        self.started = time.perf_counter()

    def _open_run_dir(self, resumed: bool) -> Path:
        """Rank 0's local directory for the run's files (see rayft_core.storage), ready for this attempt."""
        out = storage.local_run_dir(self.run.output.dir)
        if storage.is_uri(self.run.output.dir):
            shutil.rmtree(out, ignore_errors=True)  # a stale copy from another run or attempt on this node
        out.mkdir(parents=True, exist_ok=True)
        if resumed:
            storage.fetch(self.run.output.dir, out)  # nothing to do when the run directory is a path
        else:  # an attempt restarted before the first checkpoint starts the record over
            outputs.truncate_metrics(out, 0)
        return out

    # ----------------------------------------------------------------------------------------- train

    def __enter__(self) -> WorkerSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.trackers is not None:
            self.trackers.close()

    @property
    def done(self) -> bool:
        return self.step >= self.plan.total_steps or self.stop is not None

    def follow_stream(self, stream: Any) -> None:
        """Data that knows where it stands (rayft.stream.WorkerStream: ``state()``, ``restore(state)``): each
        checkpoint keeps this rank's position, a resume restores it, and no batch is skipped by count."""
        self.stream = stream
        if self.resume_from is not None:
            stream.restore(load_stream_position(self.resume_from, self.rank))
            self.state = dataclasses.replace(self.state, micro_batches_done=0)

    def stream_shares(self) -> dict[str, float]:
        """data/share/<dataset>: the share of the streamed rows each dataset gave so far, on all workers."""
        drawn = torch.tensor(self.stream.drawn(), dtype=torch.float64, device=self.device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(drawn)
        total = drawn.sum().item()
        if len(drawn) < 2 or not total:
            return {}
        return {f"data/share/{label}": round(n / total, 4) for label, n in zip(self.stream.labels, drawn.tolist())}

    def batches(self, epoch_batches: Callable[[int], Iterable[Any]], what: str = "training data") -> Iterator[Any]:
        """This worker's batches for the rest of the plan. ``epoch_batches(epoch)`` yields one epoch's; those
        trained before the checkpoint resumed from are skipped, so no batch is trained twice."""
        plan, resumed_epoch, resumed_done = self.plan, self.state.epoch, self.state.micro_batches_done
        for epoch in range(resumed_epoch, plan.num_epochs):
            index = -1
            for index, batch in enumerate(self._timed(epoch_batches(epoch))):
                if index >= plan.micro_batches_per_epoch or self.done:
                    break
                if epoch == resumed_epoch and index < resumed_done:
                    continue
                self.epoch, self.index = epoch, index
                yield batch
            if self.done:
                return
            if index < 0:
                raise UserInputError(f"the {what} ran out: an epoch gave this worker no batches")

    def _timed(self, batches: Iterable[Any]) -> Iterator[Any]:
        """``batches``, the time spent waiting for each added to self.data_wait."""
        iterator = iter(batches)
        while True:
            start = time.perf_counter()
            batch = next(iterator, _END)
            self.data_wait += time.perf_counter() - start
            if batch is _END:
                return
            yield batch

    def waited(self) -> float:
        """Seconds spent waiting for batches since the last call (perf/data_wait_s)."""
        since, self._wait_reported = self.data_wait - self._wait_reported, self.data_wait
        return since

    def micro_batches(self, stage: Stage, examples: dict[str, Any]) -> Iterator[dict[str, torch.Tensor]]:
        """A micro-batch of rows as the tensors this worker trains on: padded, on its device; with sequence
        parallelism, its slice of each of its group's micro-batches in turn (rayft_core.train.sequence_parallel)."""
        pad = self.tokenizer.pad_token_id

        def collate(rows: dict[str, Any]) -> dict[str, torch.Tensor]:
            return {k: v.to(self.device) for k, v in stage.collate(rows, pad).items()}

        if self.split is None:
            yield collate(examples)
        else:
            yield from self.split.batches(examples, collate)

    def _learning_rate(self) -> float:
        return self.scheduler.get_last_lr()[0] if self.scheduler else self.run.train.learning_rate

    def logs_at(self, step: int) -> bool:
        return step % self.run.train.logging_steps == 0 or step == self.plan.total_steps

    def saves_at(self, step: int) -> bool:
        every = self.run.checkpoint.save_steps
        return bool(every) and step % every == 0 and step < self.plan.total_steps

    def end_step(self, metrics: dict[str, Any]) -> None:
        """One step done. ``metrics``: what the loop measured (empty where the step logs nothing). A record is
        written and reported where there are metrics or a checkpoint is due; eval/loss counts toward early stopping."""
        self.step += 1
        step, save = self.step, self.saves_at(self.step)
        if any(change.after_step == step for change in self.run.train.schedule):
            hyperparameters.apply(self.engine, schedule.at_step(self.run, step), self.scheduler_steps)
        trained_lr, self.lr = self.lr, self._learning_rate()
        if not (metrics or save):
            return
        record = {
            "step": step,
            **metrics,
            "train/epoch": self.epoch + (self.index + 1) / self.plan.micro_batches_per_epoch,
            "train/lr": trained_lr,
            "mem/peak_gb": peak_memory_gb(),
        }
        if "eval/loss" in metrics:  # the same on every rank: eval/loss is reduced
            self.stop = self.state.record_eval(metrics["eval/loss"], self.run)
        if self.rank == 0:
            outputs.append_metrics(self.out, record)
            self.trackers.log(record, step)
        if not (save and self.stop is None):
            self.report(record)
            return
        self.state = dataclasses.replace(
            self.state, step=step, epoch=self.epoch, micro_batches_done=self.index + 1, stage_state=self.stage_state()
        )
        position = self.stream.state() if self.stream is not None else None
        checkpoint_dir = save_checkpoint(self.engine, self.rank, self.state, self.run, position)
        try:
            self.report(record, checkpoint_dir=checkpoint_dir)
        except OSError as e:  # the upload to storage_path; the checkpoints before this one stay whole
            raise UserInputError(
                storage.explain_os_error(e, f"the checkpoint of step {step} to {self.run.output.dir}")
            ) from e
        if self.rank == 0:  # the record up to this checkpoint, where a restarted rank 0 on any node finds it
            self._publish(f"the metrics of step {step}")

    # ----------------------------------------------------------------------------------------- finish

    def finish(self) -> None:
        """summary.json on rank 0 and the trained model (a collective under ZeRO-3: every rank calls it)."""
        if self.stop is not None and self.rank == 0:
            outputs.append_event(self.out, {"event": "early_stopped", "step": self.step, **self.stop})
            logger.info("early stopping at step %d: %s", self.step, self.stop)
        self._summarize(time.perf_counter() - self.started)
        self._save_model()

    def _summarize(self, seconds: float) -> None:
        """What this attempt trained, how fast; the node and peak memory of every worker."""
        mine = {
            "node": self.node,
            "peak_memory_gb": round(peak_memory_gb(), 3),
            "tokens": self.tokens,
            "threads": torch.get_num_threads(),
            "data_wait": round(self.data_wait, 2),
            "tokenized_on": dict(self.stream.tokenized_on) if self.stream is not None else {},
        }
        workers: list[Any] = [mine]
        if torch.distributed.is_initialized():
            workers = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(workers, mine)
        if self.rank != 0:
            return
        tokens = sum(w["tokens"] for w in workers)
        tokenized_on: dict[str, int] = {}  # a stream's: where its rows were tokenized (chunks per Ray node)
        for w in workers:
            for node, n in w["tokenized_on"].items():
                tokenized_on[node] = tokenized_on.get(node, 0) + n
        outputs.write_summary(
            self.out,
            {
                "steps": self.step - self.first_step,
                "resumed_from_step": self.first_step or None,
                "tokens": tokens,
                "train_seconds": round(seconds, 2),
                "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
                "peak_memory_gb_per_worker": [w["peak_memory_gb"] for w in workers],
                "worker_nodes": [w["node"] for w in workers],
                "threads_per_worker": [w["threads"] for w in workers],
                "data_wait_seconds_per_worker": [w["data_wait"] for w in workers],
                **({"stream_chunks_tokenized_per_node": tokenized_on} if tokenized_on else {}),
                "best_eval_loss": self.state.best_eval,
                "stopped_early": self.stop is not None,
                "output_dir": self.run.output.dir,
            },
        )

    def _save_model(self) -> None:
        run, out, zero3 = self.run, self.out, self.run.deepspeed.zero_stage == 3
        try:
            if zero3:  # every rank holds a partition: all join the gathering, one module at a time
                save_partitioned(self.engine.module, out, self.rank, run.output.max_shard_size)
            if self.rank != 0:
                return
            outputs.save_model(self.engine.module, self.tokenizer, run, out, weights=not zero3)
            outputs.plot_loss(out)
            if run.output.merge_adapter and run.tuning.trains_adapter:
                from rayft_core.export import export_model

                export_model(
                    out, out / outputs.MERGED_DIR, trust_remote_code=run.model.trust_remote_code, overwrite=True
                )  # an earlier attempt's merged copy, if one finished before a restart
        except OSError as e:
            raise UserInputError(storage.explain_os_error(e, f"the trained model to {out}")) from e
        self._publish("the trained model")

    def _publish(self, what: str) -> None:
        try:
            storage.publish(self.out, self.run.output.dir)
        except OSError as e:
            raise UserInputError(storage.explain_os_error(e, f"{what} to {self.run.output.dir}")) from e


def peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _gradient_average(ds_config: dict[str, Any], world_size: int, sp: int) -> int:
    """Over how many workers DeepSpeed averages each gradient. Sequence-parallel peers each hold part of a
    sequence, so their gradients must be summed: ZeRO-0/1/2 average over the data-parallel workers only, but
    ZeRO-3's reduce-scatter averages over every worker (DeepSpeed 0.19 corrects for sequence parallelism only on
    its other path, taken when reduce_scatter is off and a bucket holds the parameter), and the loss makes up
    for it."""
    zero = ds_config.get("zero_optimization", {})
    if zero.get("stage") != 3 or sp == 1:
        return world_size // sp
    if not zero.get("reduce_scatter", True):
        raise UserInputError(
            "deepspeed.config_file: zero_optimization.reduce_scatter false with ZeRO-3 and "
            "cluster.sequence_parallel_size > 1 averages some gradients over the data-parallel workers and others "
            "over every worker; remove the key (rayft's sequence parallelism needs DeepSpeed's reduce-scatter)"
        )
    return world_size


def begin_micro_step(engine: Any) -> None:
    """What DeepSpeed's ``engine.forward`` does before the module runs, for rayft's objectives, which call the
    module (or its decoder and head apart) themselves: the ZeRO optimizer learns that a new micro-step begins.
    Without it ZeRO-3 overwrites each micro-step's gradient partition with the next one's instead of adding them,
    so gradient accumulation (and sequence parallelism's micro-steps) trained on the last micro-batch only."""
    from deepspeed.runtime.base_optimizer import ZeROOptimizer

    if isinstance(engine.optimizer, ZeROOptimizer):
        engine.optimizer.clear_backward_seen_flag()
