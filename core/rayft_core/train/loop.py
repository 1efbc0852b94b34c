"""The training loop of one worker: build the model, wrap it in DeepSpeed, step, report, save.

It knows nothing of Ray: the cluster layer hands it an iterator of batches per epoch and a
``report`` function, so the same loop runs under Ray Train or in a plain process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import resource
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from rayft_core.config import RunConfig
from rayft_core import storage
from rayft_core.errors import UserInputError
from rayft_core.model.adapters import apply_tuning, count_parameters
from rayft_core.model.loader import load_model, load_tokenizer, resolve_dtype
from rayft_core.train import outputs
from rayft_core.train.deepspeed_config import build_deepspeed_config
from rayft_core.train.optim import build_optimizer, build_scheduler
from rayft_core.train.stage import Metrics, Objective, Stage, sequence_columns
from rayft_core.train.stages import STAGES
from rayft_core.train.tracking import Trackers

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainPlan:
    """Decided on the driver from the data: how far each worker goes."""

    micro_batches_per_epoch: int  # per worker; equal on every worker so collectives line up
    num_epochs: int
    total_steps: int  # optimizer steps

    @classmethod
    def from_rows(cls, run: RunConfig, num_rows: int | None) -> "TrainPlan":
        """num_rows None: a stream of unknown length, trained for train.max_steps (each worker's
        stream restarts as a new epoch if it ends first)."""
        t = run.train
        if num_rows is None:
            return cls(micro_batches_per_epoch=STREAM, num_epochs=STREAM, total_steps=t.max_steps)
        per_worker = num_rows // run.cluster.num_workers
        micro = per_worker // t.micro_batch_size
        steps_per_epoch = micro // t.gradient_accumulation_steps
        if steps_per_epoch == 0:
            raise UserInputError(f"{num_rows} training rows are fewer than one optimizer step needs "
                                 f"({run.global_batch_size} = micro_batch_size x gradient_accumulation_steps x num_workers); "
                                 "lower those or add data")
        if t.max_steps:
            total = t.max_steps
        else:
            total = max(1, int(steps_per_epoch * t.num_epochs))
        epochs = -(-total // steps_per_epoch)  # ceil
        return cls(micro_batches_per_epoch=steps_per_epoch * t.gradient_accumulation_steps,
                   num_epochs=epochs, total_steps=total)


STREAM = 2**62  # "until max_steps": the plan of a stream whose length is unknown


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def train_worker(run: RunConfig, plan: TrainPlan, epoch_batches: Callable[[int], Iterable[dict[str, Any]]],
                 report: Callable[..., None], rank: int, world_size: int,
                 eval_batches: Callable[[], Iterable[dict[str, Any]]] | None = None,
                 resume_from: str | Path | None = None, node: str | None = None) -> None:
    """Train for plan.total_steps optimizer steps and save on rank 0.

    ``epoch_batches(epoch)`` yields this worker's micro-batches of tokenized rows (the stage's columns,
    e.g. {"input_ids": [...], "labels": [...]}, plus "position_ids" for packed rows; one list per row);
    the stage pads them into tensors here.
    ``eval_batches()`` yields this worker's share of the evaluation rows, when there are any.
    ``report(metrics, checkpoint_dir=None)`` is called by every rank at the same steps; with a
    checkpoint_dir it hands over this rank's part of a checkpoint (see ``save_checkpoint``).
    ``resume_from``: a checkpoint directory (every rank's files) to continue from.
    ``node``: which machine this worker runs on, for the summary (default: the host name).
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed otherwise probes for CUDA and fails
    try:
        import deepspeed
    except ImportError:
        raise ImportError("training needs DeepSpeed: pip install 'rayft[deepspeed]'") from None

    seed_everything(run.train.seed)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    tokenizer = load_tokenizer(run.model)
    stage = STAGES[run.stage.name]
    model = stage.prepare_model(apply_tuning(load_model(run, tokenizer), run), run)
    trainable, total = count_parameters(model)
    if rank == 0:
        logger.info("trainable parameters: %s of %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    ds_config = build_deepspeed_config(run, resolve_dtype(run.model.dtype), world_size)
    optimizer = None if "optimizer" in ds_config else build_optimizer(model, run)
    scheduler = build_scheduler(optimizer, run, plan.total_steps) if optimizer else None
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                           config=ds_config, dist_init_required=False)
    objective = stage.objective(run, tokenizer, device, ds_config)
    engine.train()

    out = _open_run_dir(run, resumed=resume_from is not None) if rank == 0 else None
    state = TrainerState()
    if resume_from is not None:
        state = load_checkpoint(engine, resume_from, run, out)
    trackers = Trackers(run, out, resumed=resume_from is not None) if rank == 0 else None
    step, first_step, stop = state.step, state.step, None
    try:
        started, tokens = time.perf_counter(), 0
        window = _Window()
        for epoch in range(state.epoch, plan.num_epochs):
            micro = -1
            for micro, examples in enumerate(epoch_batches(epoch)):
                if micro >= plan.micro_batches_per_epoch or step >= plan.total_steps:
                    break
                if epoch == state.epoch and micro < state.micro_batches_done:  # trained before the checkpoint: skipped
                    continue
                batch = {k: v.to(device) for k, v in stage.collate(examples, tokenizer.pad_token_id).items()}
                n_input = sum(len(x) for c in sequence_columns(stage.columns) if c.endswith("input_ids") for x in examples[c])
                boundary = engine.is_gradient_accumulation_boundary()
                logging_step = boundary and ((step + 1) % run.train.logging_steps == 0 or step + 1 == plan.total_steps)
                loss, step_metrics = objective(engine.module, batch)
                engine.backward(loss)
                grad_norm = _grad_norm(engine, model) if logging_step else None  # reduced, not yet clipped
                engine.step()
                window.add(step_metrics, n_input, len(examples[stage.columns[0]]))
                tokens += n_input
                if not boundary:
                    continue
                step += 1
                eval_step = eval_batches is not None and (step == plan.total_steps or
                                                          (run.train.eval_steps and step % run.train.eval_steps == 0))
                save_step = run.checkpoint.save_steps and step % run.checkpoint.save_steps == 0 and step < plan.total_steps
                if not (logging_step or eval_step or save_step):
                    continue
                metrics: dict[str, Any] = {"step": step}
                if logging_step:
                    metrics.update(window.reduce(device, "train/"))
                    metrics.update({"train/epoch": epoch + (micro + 1) / plan.micro_batches_per_epoch,
                                    "train/lr": scheduler.get_last_lr()[0] if scheduler else run.train.learning_rate,
                                    "train/grad_norm": _reported_grad_norm(engine, grad_norm), "mem/peak_gb": peak_memory_gb()})
                    window = _Window()
                if eval_step:
                    metrics.update(evaluate(engine, stage, objective, eval_batches, tokenizer.pad_token_id, device))
                    stop = state.record_eval(metrics.get("eval/loss"), run)  # the same on every rank: eval/loss is reduced
                if rank == 0:
                    outputs.append_metrics(out, metrics)
                    trackers.log(metrics, step)
                if save_step and stop is None:
                    state = dataclasses.replace(state, step=step, epoch=epoch, micro_batches_done=micro + 1)
                    checkpoint_dir = save_checkpoint(engine, rank, state)
                    try:
                        report(metrics, checkpoint_dir=checkpoint_dir)
                    except OSError as e:  # the upload to storage_path; the checkpoints before this one stay whole
                        raise UserInputError(storage.explain_os_error(
                            e, f"the checkpoint of step {step} to {run.output.dir}")) from e
                    if rank == 0:  # the record up to this checkpoint, where a restarted rank 0 on any node finds it
                        _publish(out, run, f"the metrics of step {step}")
                else:
                    report(metrics)
                if stop is not None:
                    break
            if step >= plan.total_steps or stop is not None:
                break
            if micro < 0:
                raise UserInputError("the training data ran out: an epoch gave this worker no batches")
        if stop is not None and rank == 0:
            outputs.append_event(out, {"event": "early_stopped", "step": step, **stop})
            logger.info("early stopping at step %d: %s", step, stop)
        _summarize(run, out, device, rank, steps=step - first_step, first_step=first_step, tokens=tokens,
                   seconds=time.perf_counter() - started, best_eval=state.best_eval, node=node or socket.gethostname(),
                   stopped_early=stop is not None)
    finally:
        if trackers is not None:
            trackers.close()
    _save(engine, tokenizer, run, rank, out)


@dataclass
class TrainerState:
    """Where training stands, saved with every checkpoint (trainer_state.json) beside the DeepSpeed state."""

    step: int = 0
    epoch: int = 0
    micro_batches_done: int = 0  # of that epoch: skipped on resume, so no batch is trained twice
    best_eval: float | None = None  # lowest eval/loss so far
    evals_without_improvement: int = 0  # for train.early_stopping_patience
    stage_state: dict[str, Any] = dataclasses.field(default_factory=dict)  # what a stage carries on (RL: the KL coefficient)

    def record_eval(self, loss: float | None, run: RunConfig) -> dict[str, Any] | None:
        """Count one evaluation; return why training stops early, or None."""
        if loss is None:
            return None
        t = run.train
        improved = self.best_eval is None or loss < self.best_eval - t.early_stopping_threshold
        self.best_eval = loss if self.best_eval is None else min(loss, self.best_eval)
        self.evals_without_improvement = 0 if improved else self.evals_without_improvement + 1
        if t.early_stopping_patience and self.evals_without_improvement >= t.early_stopping_patience:
            return {"reason": f"eval/loss has not improved on {self.best_eval:.6g} by more than "
                              f"{t.early_stopping_threshold:g} for {self.evals_without_improvement} evaluations",
                    "best_eval_loss": self.best_eval}
        return None


def _open_run_dir(run: RunConfig, resumed: bool) -> Path:
    """Rank 0's local directory for the run's files (see rayft_core.storage), ready for this attempt."""
    out = storage.local_run_dir(run.output.dir)
    if storage.is_uri(run.output.dir):
        shutil.rmtree(out, ignore_errors=True)  # a stale copy from another run or attempt on this node
    out.mkdir(parents=True, exist_ok=True)
    if resumed:
        storage.fetch(run.output.dir, out)  # nothing to do when the run directory is a path
    if not resumed:  # an attempt restarted before the first checkpoint starts the record over
        outputs.truncate_metrics(out, 0)
    return out


def _publish(out: Path, run: RunConfig, what: str) -> None:
    try:
        storage.publish(out, run.output.dir)
    except OSError as e:
        raise UserInputError(storage.explain_os_error(e, f"{what} to {run.output.dir}")) from e


def _summarize(run: RunConfig, out: Path | None, device: torch.device, rank: int, steps: int, first_step: int,
               tokens: int, seconds: float, best_eval: float | None, node: str, stopped_early: bool) -> None:
    """summary.json on rank 0: what this attempt trained, how fast; the node and peak memory of every worker."""
    mine = {"node": node, "peak_memory_gb": round(peak_memory_gb(), 3), "tokens": tokens}
    if torch.distributed.is_initialized():
        workers: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(workers, mine)
    else:
        workers = [mine]
    if rank != 0:
        return
    total_tokens = sum(w["tokens"] for w in workers)
    outputs.write_summary(out, {
        "steps": steps, "resumed_from_step": first_step or None, "tokens": total_tokens,
        "train_seconds": round(seconds, 2), "tokens_per_s": round(total_tokens / seconds, 1) if seconds else None,
        "peak_memory_gb_per_worker": [w["peak_memory_gb"] for w in workers],
        "worker_nodes": [w["node"] for w in workers],
        "best_eval_loss": best_eval, "stopped_early": stopped_early,
        "output_dir": run.output.dir})


CHECKPOINT_TAG = "state"  # DeepSpeed's folder inside a checkpoint
TRAINER_STATE = "trainer_state.json"  # where training stood: written by rank 0 beside the DeepSpeed state


def save_checkpoint(engine: Any, rank: int, state: TrainerState) -> str:
    """This rank's part of a checkpoint in a new local directory: its ZeRO shards (frozen weights left out:
    they are in the base model), and on rank 0 the trainer state. The caller uploads and deletes it;
    Ray Train merges the ranks' directories and registers the checkpoint only once all have arrived, so a
    checkpoint cut short (a full disk, a lost node) is never the one a run resumes from."""
    directory = tempfile.mkdtemp(prefix="rayft-checkpoint-")
    try:
        engine.save_checkpoint(directory, tag=CHECKPOINT_TAG, exclude_frozen_parameters=True)
        if rank == 0:
            (Path(directory) / TRAINER_STATE).write_text(json.dumps(dataclasses.asdict(state)))
    except OSError as e:
        shutil.rmtree(directory, ignore_errors=True)
        raise UserInputError(storage.explain_os_error(e, f"the checkpoint of step {state.step} to {directory}")) from e
    return directory


def load_checkpoint(engine: Any, directory: str | Path, run: RunConfig, out: Path | None) -> TrainerState:
    """Restore every rank's state from a checkpoint and return where training stood.

    Rank 0 (``out``: its run directory) drops metrics logged after the checkpoint (they will be logged
    again), so no step counts twice.
    """
    state_file = Path(directory) / TRAINER_STATE
    if not state_file.is_file():
        raise UserInputError(f"checkpoint {directory} has no {TRAINER_STATE}: it was not written by rayft, or "
                             "not completely")
    state = TrainerState(**json.loads(state_file.read_text()))
    path, _ = engine.load_checkpoint(str(directory), tag=CHECKPOINT_TAG, load_module_strict=False,
                                     load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise UserInputError(f"checkpoint {directory} holds no DeepSpeed state for this run ({CHECKPOINT_TAG}/)")
    seed_everything(run.train.seed + state.step)  # fresh, reproducible randomness for the rest of the run
    if out is not None:
        outputs.truncate_metrics(out, state.step)
        outputs.append_event(out, {"event": "resumed", "step": state.step, "checkpoint": str(directory)})
        logger.info("resumed from the checkpoint of step %d", state.step)
    return state


def evaluate(engine: Any, stage: Stage, objective: Objective, batches: Callable[[], Iterable[dict[str, Any]]],
             pad_token_id: int, device: torch.device) -> dict[str, float]:
    """The stage's metrics over this worker's evaluation rows, reduced across workers, as eval/*.

    Every worker runs as many forward passes as the others (Ray splits the rows equally), which
    ZeRO-3's parameter gathering needs.
    """
    engine.eval()
    window = _Window()
    with torch.no_grad():
        for examples in batches():
            batch = {k: v.to(device) for k, v in stage.collate(examples, pad_token_id).items()}
            window.add(objective(engine.module, batch)[1], 0, 0)
    engine.train()
    return {k: v for k, v in window.reduce(device, "eval/").items() if k.startswith("eval/")}


def _grad_norm(engine: Any, model: torch.nn.Module) -> float | None:
    """The global gradient norm before clipping, where DeepSpeed does not track it (ZeRO-0)."""
    if engine.zero_optimization_stage() > 0:
        return None  # the ZeRO optimizer computes it during step(); read it afterwards
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def _reported_grad_norm(engine: Any, computed: float | None) -> float:
    norm = computed if computed is not None else engine.get_global_grad_norm()
    return float(norm) if norm is not None else float("nan")


class _Window:
    """Sums over the micro-batches since the last report, reduced across workers when reported."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.metrics: dict[str, list[float]] = {}  # name -> [sum, count]
        self.tokens = 0  # non-padding input tokens
        self.samples = 0

    def add(self, metrics: Metrics, tokens: int, samples: int) -> None:
        for name, (total, count) in metrics.items():
            acc = self.metrics.setdefault(name, [0.0, 0.0])
            acc[0] += total
            acc[1] += count
        self.tokens += tokens
        self.samples += samples

    def reduce(self, device: torch.device, prefix: str) -> dict[str, float]:
        names = sorted(self.metrics)  # every rank has the same names: the stage returns all of them every call
        values = torch.tensor([x for n in names for x in self.metrics[n]] + [self.tokens, self.samples],
                              dtype=torch.float64, device=device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(values)
        *sums, tokens, samples = values.tolist()
        elapsed = time.perf_counter() - self.start
        out = {f"{prefix}{n}": sums[2 * i] / sums[2 * i + 1] for i, n in enumerate(names) if sums[2 * i + 1] > 0}
        return {**out, "perf/tokens_per_s": tokens / elapsed, "perf/samples_per_s": samples / elapsed}


def _save(engine: Any, tokenizer: Any, run: RunConfig, rank: int, out: Path | None) -> None:
    # Under ZeRO-3 every rank holds a shard: gathering is a collective all ranks must join.
    state_dict = engine._zero3_consolidated_16bit_state_dict() if run.deepspeed.zero_stage == 3 else None
    if rank != 0:
        return
    try:
        outputs.save_model(engine.module, tokenizer, run, out, state_dict=state_dict)
        outputs.plot_loss(out)
        if run.output.merge_adapter and run.tuning.method == "lora":
            from rayft_core.export import export_model

            export_model(out, out / outputs.MERGED_DIR, trust_remote_code=run.model.trust_remote_code,
                         overwrite=True)  # an earlier attempt's merged copy, if one finished before a restart
    except OSError as e:
        raise UserInputError(storage.explain_os_error(e, f"the trained model to {out}")) from e
    _publish(out, run, "the trained model")
