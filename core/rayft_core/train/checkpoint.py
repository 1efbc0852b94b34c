"""A run's checkpoints: every rank's DeepSpeed state plus where training stood (``TrainerState``).

Each rank writes its part into a local directory; the cluster layer uploads it (Ray Train merges the ranks'
directories and registers the checkpoint once all have arrived) and hands the latest back on resume.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayft_core import storage
from rayft_core.config import RunConfig, dump_config
from rayft_core.errors import UserInputError
from rayft_core.train import outputs

logger = logging.getLogger(__name__)

CHECKPOINT_TAG = "state"  # DeepSpeed's folder inside a checkpoint
TRAINER_STATE = "trainer_state.json"  # where training stood: written by rank 0 beside the DeepSpeed state
STREAM_POSITION = "stream_position_rank{rank}.json"  # where each rank's streamed data stood (rayft.stream)


@dataclass
class TrainerState:
    """Where training stands, saved with every checkpoint (trainer_state.json) beside the DeepSpeed state."""

    step: int = 0
    epoch: int = 0
    micro_batches_done: int = 0  # of that epoch: skipped on resume, so no batch is trained twice
    best_eval: float | None = None  # lowest eval/loss so far
    evals_without_improvement: int = 0  # for train.early_stopping_patience
    stage_state: dict[str, Any] = dataclasses.field(
        default_factory=dict
    )  # what a stage carries on (RL: KL coefficient)

    def record_eval(self, loss: float | None, run: RunConfig) -> dict[str, Any] | None:
        """Count one evaluation; return why training stops early, or None."""
        if loss is None:
            return None
        t = run.train
        improved = self.best_eval is None or loss < self.best_eval - t.early_stopping_threshold
        self.best_eval = loss if self.best_eval is None else min(loss, self.best_eval)
        self.evals_without_improvement = 0 if improved else self.evals_without_improvement + 1
        if t.early_stopping_patience and self.evals_without_improvement >= t.early_stopping_patience:
            return {
                "reason": f"eval/loss has not improved on {self.best_eval:.6g} by more than "
                f"{t.early_stopping_threshold:g} for {self.evals_without_improvement} evaluations",
                "best_eval_loss": self.best_eval,
            }
        return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_checkpoint(
    engine: Any, rank: int, state: TrainerState, run: RunConfig, stream_position: dict[str, Any] | None = None
) -> str:
    """This rank's part of a checkpoint in a new local directory: its ZeRO shards (frozen weights left out:
    they are in the base model), where its stream stood (a streamed run), and on rank 0 the trainer state and
    the run's config (so that `rayft export` reads a checkpoint copied anywhere). The caller uploads and deletes it;
    Ray Train merges the ranks' directories and registers the checkpoint only once all have arrived, so a
    checkpoint cut short (a full disk, a lost node) is never the one a run resumes from."""
    directory = tempfile.mkdtemp(prefix="rayft-checkpoint-")
    try:
        engine.save_checkpoint(directory, tag=CHECKPOINT_TAG, exclude_frozen_parameters=True)
        if stream_position is not None:
            (Path(directory) / STREAM_POSITION.format(rank=rank)).write_text(json.dumps(stream_position))
        if rank == 0:
            (Path(directory) / TRAINER_STATE).write_text(json.dumps(dataclasses.asdict(state)))
            (Path(directory) / outputs.CONFIG_FILE).write_text(dump_config(run))
    except OSError as e:
        shutil.rmtree(directory, ignore_errors=True)
        raise UserInputError(storage.explain_os_error(e, f"the checkpoint of step {state.step} to {directory}")) from e
    return directory


def load_stream_position(directory: str | Path, rank: int) -> dict[str, Any]:
    """Where this rank's stream stood at the checkpoint (see save_checkpoint)."""
    path = Path(directory) / STREAM_POSITION.format(rank=rank)
    if not path.is_file():
        raise UserInputError(
            f"checkpoint {directory} holds no stream position for worker {rank}: it was written by a run "
            "that did not stream its data, or by one with fewer workers"
        )
    return json.loads(path.read_text())


def load_checkpoint(engine: Any, directory: str | Path, run: RunConfig, out: Path | None) -> TrainerState:
    """Restore every rank's state from a checkpoint and return where training stood.

    Rank 0 (``out``: its run directory) drops metrics logged after the checkpoint (they will be logged
    again), so no step counts twice.
    """
    state_file = Path(directory) / TRAINER_STATE
    if not state_file.is_file():
        raise UserInputError(
            f"checkpoint {directory} has no {TRAINER_STATE}: it was not written by rayft, or not completely"
        )
    state = TrainerState(**json.loads(state_file.read_text()))
    path, _ = engine.load_checkpoint(
        str(directory),
        tag=CHECKPOINT_TAG,
        load_module_strict=False,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
    )
    if path is None:
        raise UserInputError(f"checkpoint {directory} holds no DeepSpeed state for this run ({CHECKPOINT_TAG}/)")
    seed_everything(run.train.seed + state.step)  # fresh, reproducible randomness for the rest of the run
    if out is not None:
        outputs.truncate_metrics(out, state.step)
        outputs.append_event(out, {"event": "resumed", "step": state.step, "checkpoint": str(directory)})
        logger.info("resumed from the checkpoint of step %d", state.step)
    return state
