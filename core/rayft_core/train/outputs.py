"""What a run leaves behind: metrics JSONL, a loss-curve PNG, the model in plain HF format
(merged copies are written by rayft_core.export)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from rayft_core.config import RunConfig, dump_config

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
SUMMARY_FILE = "summary.json"
LOSS_PLOT_FILE = "loss.png"
CONFIG_FILE = "rayft_run.yaml"
MERGED_DIR = "merged"


def append_metrics(output_dir: str | Path, metrics: dict[str, Any]) -> None:
    with open(Path(output_dir) / METRICS_FILE, "a") as f:
        f.write(json.dumps(metrics) + "\n")


def truncate_metrics(output_dir: str | Path, last_step: int) -> None:
    """Drop the metrics logged after ``last_step`` (a run resumed from that step logs them again)."""
    rows = [r for r in read_metrics(output_dir) if r["step"] <= last_step]
    (Path(output_dir) / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))


def append_event(output_dir: str | Path, event: dict[str, Any]) -> None:
    """events.jsonl: what happened to the run besides training (resumed from a checkpoint, ...)."""
    with open(Path(output_dir) / EVENTS_FILE, "a") as f:
        f.write(json.dumps({"time": time.time(), **event}) + "\n")


def write_summary(output_dir: str | Path, summary: dict[str, Any]) -> None:
    (Path(output_dir) / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-run summary as a few readable lines."""
    peaks = summary["peak_memory_gb_per_worker"]
    lines = [
        f"steps          {summary['steps']}"
        + (f" (resumed from step {summary['resumed_from_step']})" if summary.get("resumed_from_step") else ""),
        f"tokens         {summary['tokens']:,} in {summary['train_seconds']:.1f} s: {summary['tokens_per_s']:,.0f} tokens/s",
        f"peak memory    {', '.join(f'{p:.2f}' for p in peaks)} GB (per worker)",
    ]
    if epoch := summary.get("epoch"):
        n = epoch["padding_rows"]
        padding = f", and {n} masked padding row{'' if n == 1 else 's'}" if n else ""
        lines.insert(2, f"an epoch       {epoch['rows']:,} rows, {epoch['tokens']:,} tokens{padding}")
    if summary.get("stopped_early"):
        lines[0] += " (stopped early: see events.jsonl)"
    if summary.get("best_eval_loss") is not None:
        lines.append(f"best eval loss {summary['best_eval_loss']:.4f}")
    if summary.get("best_checkpoint"):
        lines.append(f"best checkpoint {summary['best_checkpoint']['path']}")
    lines.append(f"artifacts      {summary['output_dir']}")
    return "\n".join(lines)


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_loss(output_dir: str | Path) -> Path | None:
    rows = [r for r in read_metrics(output_dir) if "train/loss" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot([r["step"] for r in rows], [r["train/loss"] for r in rows], marker="o", markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(Path(output_dir).name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(output_dir) / LOSS_PLOT_FILE
    fig.savefig(path)
    plt.close(fig)
    return path


def save_model(
    model: torch.nn.Module, tokenizer: Any, run: RunConfig, output_dir: str | Path, weights: bool = True
) -> None:
    """A PEFT adapter (save_pretrained) or the full model in shards of output.max_shard_size, with tokenizer, chat
    template and run config. ``weights=False``: the weights are written already (under ZeRO-3, by
    rayft_core.model.shards.save_partitioned, which gathers them a module at a time)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if weights:
        from rayft_core.model.shards import trains_adapter

        shards = {} if trains_adapter(model) else {"max_shard_size": run.output.max_shard_size}
        model.save_pretrained(out, safe_serialization=True, **shards)
    tokenizer.save_pretrained(out)
    (out / CONFIG_FILE).write_text(dump_config(run))
