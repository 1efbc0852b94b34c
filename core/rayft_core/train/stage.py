"""What a training stage adds to the shared worker session (rayft_core.train.session): how rows become
columns, the model it trains, what the driver checks first, and (supervised stages) how columns become a
batch and the loss with its metrics. Its traits (data shape, packing, which loop) are on its config section
(rayft_core.stage_config); the table of stages is rayft_core.train.stages.

An objective returns the batch's loss summed over its units (Stage.loss_units: labelled tokens, or pairs, or
answers); the loop divides each optimizer step's sum by the units of all its micro-batches on all workers, so
every unit weighs the same whichever micro-batch it is in, and a masked padding row weighs nothing.

Metrics are (sum, count) pairs per name, summed over micro-batches and workers before they are
reported as sum / count: a token-weighted loss, a pair-weighted reward, a count of desirable answers.
Every call returns every name (count 0 where a batch has none), so workers reduce the same tensor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from rayft_core.config import RunConfig
from rayft_core.data import IGNORE_INDEX
from rayft_core.data.collate import pad_batch

if TYPE_CHECKING:
    from rayft_core.model.loader import ModelFacts

Metrics = dict[str, tuple[float, float]]  # name -> (sum, count)
Objective = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, Metrics]]  # (summed loss, metrics)


class Stage(ABC):
    name: str
    columns: tuple[str, ...] = ("input_ids", "labels")  # read by the workers; *input_ids and *labels are token lists

    @abstractmethod
    def encode_rows(self, rows: list[dict], tokenizer: Any, run: RunConfig) -> dict[str, list]:
        """Standard rows (rayft_core.data.formats) -> one list per column, plus "row_of_example"
        (which row each example came from, for error messages)."""

    @abstractmethod
    def build_model(self, run: RunConfig, tokenizer: Any) -> nn.Module:
        """The module DeepSpeed wraps: the base with the tuning method applied, and whatever the stage adds."""

    def scheduler_steps(self, run: RunConfig, plan_steps: int) -> int:
        """Optimizer steps in a plan of ``plan_steps`` steps (the learning-rate schedule's length)."""
        return plan_steps

    def real_rows(self, examples: dict[str, Any]) -> list[bool]:
        """Which rows of a batch are data: those with a label past the first token in every labels column (every
        tokenized row has one). A padding row (rayft_core.train.plan.padding_rows) and a masked bad row of a
        stream have none: they take part in the forward pass and count for nothing."""
        label_columns = [c for c in self.columns if c.endswith("labels")]
        return [all(_has_label(examples[c][i]) for c in label_columns) for i in range(len(examples[self.columns[0]]))]

    def loss_units(self, examples: dict[str, Any]) -> int:
        """What the loss averages over in a batch: here its labelled tokens (those that predict a label)."""
        return sum(int(np.count_nonzero(np.asarray(y)[1:] != IGNORE_INDEX)) for y in examples["labels"])

    def check(self, run: RunConfig, model: ModelFacts) -> list[str]:
        """On the driver, before anything starts: what the stage needs of the models and files, each problem
        as 'path: what to change'. ``model`` loads the tokenizer and the model's config once for every check."""
        return []


class SupervisedStage(Stage):
    """A stage trained by rayft_core.train.loop: each batch gives a loss."""

    def build_model(self, run: RunConfig, tokenizer: Any) -> nn.Module:
        from rayft_core.model.adapters import apply_tuning
        from rayft_core.model.loader import load_model

        return self.prepare_model(apply_tuning(load_model(run, tokenizer), run), run)

    def prepare_model(self, model: nn.Module, run: RunConfig) -> nn.Module:
        """The tuned model as the stage trains it (a reward model adds its value head here)."""
        return model

    def collate(self, examples: dict[str, Any], pad_token_id: int) -> dict[str, torch.Tensor]:
        return pad_batch(examples, pad_token_id)

    @abstractmethod
    def objective(self, run: RunConfig, tokenizer: Any, device: torch.device, ds_config: dict[str, Any]) -> Objective:
        """The summed loss (over loss_units) and metrics of one batch, built once per worker (a reference model
        is loaded here)."""


def _has_label(labels: Any) -> bool:
    return bool(np.any(np.asarray(labels)[1:] != IGNORE_INDEX))


def sequence_columns(columns: tuple[str, ...]) -> list[str]:
    return [c for c in columns if c.endswith(("input_ids", "labels"))]
