"""What the Data, Chat and Export tabs and the cluster panel compute, as plain data for the page.

Each runs in the `rayft ui` process with the same code its command runs: `rayft data preview`, `rayft chat`'s
engines, `rayft export`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

from rayft_core.config import validate_config
from rayft_core.data.inspect import histogram_counts, trained_spans
from rayft_core.errors import UserInputError


def join(remote: bool) -> None:
    """Join the Ray cluster this process reads on: the UI's own (local) one, or RAY_ADDRESS's for a remote one."""
    from rayft.cluster import connect

    if remote and not os.environ.get("RAY_ADDRESS"):
        raise UserInputError(
            "this tab reads on the cluster itself: start `rayft ui` with RAY_ADDRESS set to the cluster's address "
            "(HEAD:6379 on its network, or ray://HEAD:10001), besides --address for its jobs"
        )
    connect()


def preview(config: dict, examples: int, remote: bool = False) -> dict[str, Any]:
    """`rayft data preview` of the run CONFIG: rendered rows as (trained, text) spans, counts per dataset, the
    token-length histogram and the bad rows."""
    from rayft.checks import check_data_inputs
    from rayft.data import preview as preview_rows
    from rayft_core.model.loader import load_tokenizer

    run = validate_config(config).with_absolute_paths()
    check_data_inputs(run)
    join(remote)
    rows, report = preview_rows(run, examples)
    tokenizer = load_tokenizer(run.model)
    return {
        "rows": [_render(tokenizer, row) for row in rows],
        "datasets": [
            {"label": d.label, "examples": d.examples, "rows": d.rows, "tokens": d.tokens, "bad": d.num_bad}
            for d in report.datasets
        ],
        "rows_total": report.rows,
        "tokens_total": report.tokens,
        "packing": report.packing,
        "fill": report.fill,
        "histogram": [
            {"from": lo, "to": hi, "rows": n} for lo, hi, n in histogram_counts(report.lengths, report.max_seq_len, 12)
        ],
        "bad_rows": [line for d in report.datasets for line in d.shown],
        "bad_total": report.num_bad,
    }


def _render(tokenizer: Any, row: dict[str, Any]) -> dict[str, Any]:
    """One row's token lists (input_ids, or chosen_/rejected_ of a pair) as spans; an RL prompt's as untrained."""
    parts = []
    for prefix in (c.removesuffix("input_ids") for c in row if c.endswith("input_ids")):
        ids = row[prefix + "input_ids"]
        labels = row.get(prefix + "labels") or [-100] * len(ids)
        spans = trained_spans(tokenizer, ids, labels, row.get("position_ids"))
        parts.append({"part": prefix.rstrip("_") or "input", "tokens": len(ids), "spans": spans})
    return {"dataset": row.get("dataset"), "parts": parts, "reference": row.get("reference")}


def cluster(remote: bool = False) -> dict[str, Any]:
    """The cluster's CPUs, GPUs and memory: in all, and in use now."""
    import ray

    join(remote)
    total, free = ray.cluster_resources(), ray.available_resources()
    return {
        key: {"total": total.get(key, 0), "used": total.get(key, 0) - free.get(key, 0)}
        for key in ("CPU", "GPU", "memory", "object_store_memory")
        if key in total
    } | {"nodes": sum(1 for n in ray.nodes() if n["Alive"])}


class Engines:
    """One chat engine per model folder, loaded at its first message (as `rayft chat` loads it) and kept."""

    def __init__(self) -> None:
        self._engines: dict[str, Any] = {}
        self._lock = threading.Lock()

    def load(self, model: str) -> Any:
        """The engine of MODEL, loaded now if it is not yet (a UserInputError when MODEL is no model)."""
        from rayft_core.infer import load_engine

        with self._lock:
            if model not in self._engines:
                self._engines[model] = load_engine(model, "auto")
            return self._engines[model]

    def stream(self, model: str, messages: list[dict], params: dict[str, Any]) -> Iterator[str]:
        from rayft_core.infer import GenerationParams

        engine, params = self.load(model), GenerationParams(**params)
        with self._lock:  # one generation at a time: they share this process's cores
            yield from engine.stream(messages, params)


def export(run_dir: str, output: str, dtype: str | None, max_shard_size: str, ollama: bool) -> str:
    """`rayft export RUN_DIR -o OUTPUT`: the folder written."""
    from rayft_core.export import export_model

    return str(export_model(run_dir, output, max_shard_size=max_shard_size, dtype=dtype or None, ollama=ollama))


def eval_mc(model: str, task_dir: str, n_shot: int, lang: str, split: str) -> dict[str, Any]:
    """`rayft eval mc`: accuracy per subject, per category and overall (the predictions left out)."""
    from rayft_core.eval.mc import STYLES, evaluate, load_eval_model, summarize
    from rayft_core.eval.tasks import load_task

    tasks = load_task(task_dir, split, None)  # bad files stop here, before the model loads
    loaded, tokenizer = load_eval_model(model, None, None, "auto", "auto")
    max_len = getattr(loaded.config, "max_position_embeddings", None)
    summary = summarize(evaluate(loaded, tokenizer, tasks, n_shot, STYLES[lang], 4, max_len))
    for subject in summary["subjects"].values():
        subject.pop("predictions")
    return summary


def eval_similarity(predictions: str) -> dict[str, Any]:
    """`rayft eval similarity`: the mean ROUGE-1/2/L and BLEU-4 of a predictions JSONL (as `rayft infer` writes)."""
    from rayft_core.eval.similarity import compute_similarity, read_predictions

    return compute_similarity(read_predictions(predictions))
