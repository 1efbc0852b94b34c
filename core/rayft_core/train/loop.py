"""The supervised loop (stages pt, sft, rm, dpo, kto, orpo, simpo): each micro-batch becomes a loss, DeepSpeed
steps at every gradient-accumulation boundary, evaluation runs on its cadence. An optimizer step's loss is the
mean over the units of all its micro-batches on all workers (see rayft_core.train.stage), as HF Trainer's
num_items_in_batch with average_tokens_across_devices: a padded micro-batch weighs its rows as a full one would.
Everything else (setup, logging, checkpoints, resume, saving) is the worker session's (rayft_core.train.session).

It knows nothing of Ray: the cluster layer hands it an iterator of batches per epoch and a ``report``
function, so the same loop runs under Ray Train or in a plain process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from rayft_core.config import RunConfig
from rayft_core.train.plan import TrainPlan
from rayft_core.train.session import Report, WorkerSession, begin_micro_step
from rayft_core.train.stage import Objective, SupervisedStage, sequence_columns
from rayft_core.train.stages import STAGES
from rayft_core.train.step_metrics import MetricWindow, grad_norm_before_step, reported_grad_norm

Batches = Callable[[], Iterable[dict[str, Any]]]


def train_worker(
    run: RunConfig,
    plan: TrainPlan,
    epoch_batches: Callable[[int], Iterable[dict[str, Any]]],
    report: Report,
    rank: int,
    world_size: int,
    eval_batches: Batches | None = None,
    resume_from: str | Path | None = None,
    node: str | None = None,
    stream: Any = None,
) -> None:
    """Train for plan.total_steps optimizer steps and save on rank 0.

    ``epoch_batches(epoch)`` yields this worker's micro-batches of tokenized rows (the stage's columns,
    e.g. {"input_ids": [...], "labels": [...]}, plus "position_ids" for packed rows; one list per row);
    the stage pads them into tensors here. ``eval_batches()`` yields this worker's share of the evaluation
    rows, when there are any. ``stream``: the streamed data that ``epoch_batches`` reads, when it keeps its own
    position (see WorkerSession.follow_stream). The rest: see WorkerSession.
    """
    stage: SupervisedStage = STAGES[run.stage.name]
    session = WorkerSession(run, plan, report, rank, world_size, resume_from, node)
    session.setup(stage)
    if stream is not None:
        session.follow_stream(stream)
    objective = stage.objective(run, session.tokenizer, session.device, session.ds_config)
    if hasattr(objective, "state"):  # an objective with a running statistic (BCO's baseline) carries it over
        objective.restore(session.state.stage_state)
        session.stage_state = objective.state
    engine, device = session.engine, session.device
    forward_only = engine.optimizer.forward_only if run.tuning.forward_only else None  # MeZO's passes
    input_columns = [c for c in sequence_columns(stage.columns) if c.endswith("input_ids")]
    with session:
        window = MetricWindow()
        for step in _optimizer_steps(session.batches(epoch_batches), run.train.gradient_accumulation_steps):
            units = _step_units(stage, step, device)
            for examples in step:
                real = stage.real_rows(examples)
                tokens = sum(len(x) for c in input_columns for x, r in zip(examples[c], real) if r)
                for batch in session.micro_batches(stage, examples):  # one, or a slice of each in an SP group
                    boundary = engine.is_gradient_accumulation_boundary()
                    logs = boundary and session.logs_at(session.step + 1)
                    step_metrics, norm = _micro_step(session, objective, batch, units, logs, forward_only)
                    window.add(step_metrics)
                window.add({}, tokens, sum(real))
                session.tokens += tokens
            if not boundary:
                continue  # a stream's last, short step
            metrics: dict[str, Any] = {}
            if logs:
                metrics = {**window.reduce(device, "train/"), "train/grad_norm": reported_grad_norm(engine, norm)}
                metrics["perf/data_wait_s"] = round(session.waited(), 3)  # this worker's, since the last record
                if session.stream is not None:
                    metrics.update(session.stream_shares())
                window = MetricWindow()
            if eval_batches is not None and _evaluates_at(run, plan, session.step + 1):
                metrics.update(evaluate(session, stage, objective, eval_batches))
            session.end_step(metrics)
    session.finish()


def _micro_step(
    session: WorkerSession, objective: Objective, batch: dict, units: float, logs: bool, forward_only: Any
) -> tuple[dict, float | None]:
    """One micro-batch's forward, backward and (at a boundary) DeepSpeed step: its metrics and, where the step
    logs, the gradient norm before clipping."""
    engine = session.engine
    begin_micro_step(engine)
    if forward_only:  # a zeroth-order optimizer (MeZO): its forward passes, no backward; its projected gradient g
        metrics = forward_only(engine.module, objective, batch)[1]  # estimates the gradient's norm: E[g^2] = |grad|^2
        norm = abs(engine.optimizer.projected_grad)
    else:
        loss, metrics = objective(engine.module, batch)
        # The step's loss: its summed loss over the units of all its micro-batches on all workers. DeepSpeed averages
        # gradients over the data-parallel workers (sequence-parallel peers' are summed: each holds part of a
        # sequence); it does not scale by accumulation here.
        engine.backward(loss * (session.averaged_over / units), scale_wrt_gas=False)
        norm = grad_norm_before_step(engine, session.model) if logs else None  # reduced, not clipped
    engine.step()
    return metrics, norm


def _optimizer_steps(batches: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """Micro-batches grouped by optimizer step (gradient_accumulation_steps of them), read before the step
    trains so that its units are known before the first backward pass."""
    step: list[dict[str, Any]] = []
    for batch in batches:
        step.append(batch)
        if len(step) == size:
            yield step
            step = []
    if step:
        yield step


def _step_units(stage: SupervisedStage, step: list[dict[str, Any]], device: torch.device) -> float:
    """The units (Stage.loss_units) of one optimizer step on all workers: its loss is their mean."""
    units = torch.tensor(float(sum(stage.loss_units(examples) for examples in step)), device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(units)
    return max(units.item(), 1.0)  # no unit at all (every row masked): a zero loss, still backpropagated


def _evaluates_at(run: RunConfig, plan: TrainPlan, step: int) -> bool:
    return step == plan.total_steps or bool(run.train.eval_steps and step % run.train.eval_steps == 0)


def evaluate(
    session: WorkerSession, stage: SupervisedStage, objective: Objective, batches: Batches
) -> dict[str, float]:
    """The stage's metrics over this worker's evaluation rows, reduced across workers, as eval/*.

    Every worker runs as many forward passes as the others (Ray splits the rows equally), which
    ZeRO-3's parameter gathering needs.
    """
    engine = session.engine
    engine.eval()
    window = MetricWindow()
    with torch.no_grad():
        for examples in batches():
            for batch in session.micro_batches(stage, examples):
                window.add(objective(engine.module, batch)[1])
    engine.train()
    return {k: v for k, v in window.reduce(session.device, "eval/").items() if k.startswith("eval/")}
