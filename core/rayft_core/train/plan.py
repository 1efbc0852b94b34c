"""How far each worker trains, decided on the driver from the data."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rayft_core.config import RunConfig
from rayft_core.errors import UserInputError

STREAM = 2**62  # "until max_steps": the plan of a stream whose length is unknown


@dataclass(frozen=True)
class TrainPlan:
    """A run's steps (optimizer steps; for RL stages, iterations) and each worker's batches per epoch."""

    micro_batches_per_epoch: int  # per worker; equal on every worker so collectives line up (RL: prompt batches)
    num_epochs: int
    total_steps: int

    @classmethod
    def for_data(cls, run: RunConfig, num_rows: int | None) -> TrainPlan:
        return cls.from_prompts(run, num_rows) if run.stage.loop == "rl" else cls.from_rows(run, num_rows)

    @classmethod
    def from_rows(cls, run: RunConfig, num_rows: int | None) -> TrainPlan:
        """Supervised stages: ceil(rows / global batch) steps an epoch, every row trained once an epoch (the
        cluster layer fills the last step with masked padding rows, see ``padding_rows``). num_rows None: a
        stream of unknown length, trained for train.max_steps (each worker's stream restarts as a new epoch
        if it ends first)."""
        t = run.train
        if num_rows is None:
            return cls(micro_batches_per_epoch=STREAM, num_epochs=STREAM, total_steps=t.max_steps)
        if num_rows <= 0:
            raise UserInputError("the training data holds no rows")
        steps_per_epoch = -(-num_rows // run.global_batch_size)
        total = t.max_steps or max(1, math.ceil(steps_per_epoch * t.num_epochs))  # as HF Trainer
        return cls(
            micro_batches_per_epoch=steps_per_epoch * t.gradient_accumulation_steps,
            num_epochs=-(-total // steps_per_epoch),
            total_steps=total,
        )

    @classmethod
    def from_prompts(cls, run: RunConfig, num_prompts: int) -> TrainPlan:
        """RL stages: iterations, and prompt batches per epoch (RL prompts are never streamed)."""
        per_iteration = prompts_per_worker(run) * run.cluster.num_workers
        batches = num_prompts // per_iteration
        if batches == 0:
            raise UserInputError(
                f"{num_prompts} prompts are fewer than one iteration takes ({per_iteration} = "
                f"{prompts_per_worker(run)} per worker x {run.cluster.num_workers} workers); lower "
                "train.micro_batch_size or gradient_accumulation_steps, or add prompts"
            )
        total = run.train.max_steps or max(1, int(batches * run.train.num_epochs))
        return cls(micro_batches_per_epoch=batches, num_epochs=-(-total // batches), total_steps=total)


def prompts_per_worker(run: RunConfig) -> int:
    """RL stages: each worker's prompts per iteration, its rollout batch (micro_batch_size x
    gradient_accumulation_steps responses, one optimizer step per ppo epoch) over the responses per prompt."""
    return run.train.micro_batch_size * run.train.gradient_accumulation_steps // run.stage.responses_per_prompt


def padding_rows(num_rows: int, multiple: int) -> int:
    """Masked rows to add to ``num_rows`` for a multiple of ``multiple``: the global batch for training data,
    the number of workers for evaluation data. Ray splits a dataset among the workers in equal shares and
    drops a remainder; a padded one has none, and every worker's last batch of an epoch is full. A padding
    row (rayft_core.data.collate.padding_value) is one pad token without a label: no loss, no gradient, no token
    counted."""
    return -num_rows % multiple


def batch_size_per_worker(run: RunConfig) -> int:
    """The rows a worker reads at once: a micro-batch, or for an RL stage an iteration's prompts."""
    return prompts_per_worker(run) if run.stage.loop == "rl" else run.train.micro_batch_size
