"""What a run leaves behind: metrics JSONL, a loss-curve PNG, the model in plain HF format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from rayft_core.config import RunConfig, dump_config
from rayft_core.model.loader import resize_embeddings
from rayft_core.model.value_head import VALUE_HEAD_FILE

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT_FILE = "loss.png"
CONFIG_FILE = "rayft_run.yaml"
MERGED_DIR = "merged"


def append_metrics(output_dir: str | Path, metrics: dict[str, Any]) -> None:
    with open(Path(output_dir) / METRICS_FILE, "a") as f:
        f.write(json.dumps(metrics) + "\n")


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


def save_model(model: torch.nn.Module, tokenizer: Any, run: RunConfig, output_dir: str | Path,
               state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """A PEFT adapter (save_pretrained) or the full model, with tokenizer, chat template and run config.

    ``state_dict`` is the gathered full state under ZeRO-3, where the module holds only shards.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / CONFIG_FILE).write_text(dump_config(run))


def merge_adapter(run: RunConfig, output_dir: str | Path) -> Path:
    """Load the base (unquantized), apply the saved adapter, merge it in and save under merged/."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(run.model.name_or_path, dtype=torch.float32,
                                                trust_remote_code=run.model.trust_remote_code)
    resize_embeddings(base, len(tokenizer), seed=run.train.seed)  # the adapter's saved embeddings then replace them
    merged = PeftModel.from_pretrained(base, out).merge_and_unload()
    target = out / MERGED_DIR
    merged.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    if (out / VALUE_HEAD_FILE).is_file():  # a reward model: its head goes with the merged weights
        shutil.copy2(out / VALUE_HEAD_FILE, target / VALUE_HEAD_FILE)
    return target
