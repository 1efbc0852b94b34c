"""What a training loop measures of its steps: the metrics summed over micro-batches until a record, and the
gradient norm before clipping."""

from __future__ import annotations

import time
from typing import Any

import torch

from rayft_core.train.stage import Metrics


def grad_norm_before_step(engine: Any, model: torch.nn.Module) -> float | None:
    """The global gradient norm before clipping, where DeepSpeed does not track it (ZeRO-0); call it between
    backward and step, and pass it to ``reported_grad_norm`` after the step."""
    if engine.zero_optimization_stage() > 0:
        return None  # the ZeRO optimizer computes it during step(); read it afterwards
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def reported_grad_norm(engine: Any, computed: float | None) -> float:
    norm = computed if computed is not None else engine.get_global_grad_norm()
    return float(norm) if norm is not None else float("nan")


class MetricWindow:
    """Sums over the micro-batches since the last report, reduced across workers when reported."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.metrics: dict[str, list[float]] = {}  # name -> [sum, count]
        self.tokens = 0  # non-padding input tokens
        self.samples = 0

    def add(self, metrics: Metrics, tokens: int = 0, samples: int = 0) -> None:
        for name, (total, count) in metrics.items():
            acc = self.metrics.setdefault(name, [0.0, 0.0])
            acc[0] += total
            acc[1] += count
        self.tokens += tokens
        self.samples += samples

    def reduce(self, device: torch.device, prefix: str) -> dict[str, float]:
        """sum / count of each metric as ``prefix``name, and perf/tokens_per_s, perf/samples_per_s."""
        names = sorted(self.metrics)  # every rank has the same names: the stage returns all of them every call
        values = torch.tensor(
            [x for n in names for x in self.metrics[n]] + [self.tokens, self.samples],
            dtype=torch.float64,
            device=device,
        )
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(values)
        *sums, tokens, samples = values.tolist()
        elapsed = time.perf_counter() - self.start
        out = {f"{prefix}{n}": sums[2 * i] / sums[2 * i + 1] for i, n in enumerate(names) if sums[2 * i + 1] > 0}
        return {**out, "perf/tokens_per_s": tokens / elapsed, "perf/samples_per_s": samples / elapsed}
