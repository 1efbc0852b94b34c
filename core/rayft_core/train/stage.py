"""What a training stage adds to the shared trainer: how rows become columns, how columns become a
batch, and the loss with its metrics. Everything else (model, tuning method, DeepSpeed, data,
reporting, saving) is the trainer's.

Metrics are (sum, count) pairs per name, summed over micro-batches and workers before they are
reported as sum / count: a token-weighted loss, a pair-weighted reward, a count of desirable answers.
Every call returns every name (count 0 where a batch has none), so workers reduce the same tensor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import torch
from torch import nn

from rayft_core.config import RunConfig
from rayft_core.data.collate import pad_batch

Metrics = dict[str, tuple[float, float]]  # name -> (sum, count)
Objective = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, Metrics]]


class Stage(ABC):
    name: str
    columns: tuple[str, ...] = ("input_ids", "labels")  # read by the workers; *input_ids and *labels are token lists

    @abstractmethod
    def encode_rows(self, rows: list[dict], tokenizer: Any, run: RunConfig) -> dict[str, list]:
        """Standard rows (rayft_core.data.formats) -> one list per column, plus "row_of_example"
        (which row each example came from, for error messages)."""

    def collate(self, examples: dict[str, Any], pad_token_id: int) -> dict[str, torch.Tensor]:
        return pad_batch(examples, pad_token_id)

    def prepare_model(self, model: nn.Module, run: RunConfig) -> nn.Module:
        """The module DeepSpeed wraps (a reward model adds its value head here)."""
        return model

    @abstractmethod
    def objective(self, run: RunConfig, tokenizer: Any, device: torch.device, ds_config: dict[str, Any]) -> Objective:
        """The loss and metrics of one batch, built once per worker (a reference model is loaded here)."""


def sequence_columns(columns: tuple[str, ...]) -> list[str]:
    return [c for c in columns if c.endswith(("input_ids", "labels"))]
