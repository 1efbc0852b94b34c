"""`rayft eval`: score a model on multiple-choice benchmarks, or generated text against references.

    rayft eval mc --model outputs/sft-lora --task-dir examples/eval/mmlu --n-shot 5 --output mmlu.json
    rayft eval mc --model outputs/sft-lora --task-dir examples/eval/ceval --split val --lang zh
    rayft eval similarity outputs/predictions.jsonl --output scores.json

Both run in this process (no Ray): a benchmark is one batched forward pass per question batch, on the GPU
when there is one; the metrics are CPU work. The engine is rayft_core.eval, the commands rayft/cli/eval.py;
this module holds what they share: the output file's checks and writing, and the result tables.
"""

from __future__ import annotations

import json
from typing import Any

from rayft_core.ownership import check_new_file, write_file_atomically


def check_output(output: str | None, overwrite: bool, *inputs: str) -> None:
    """Before any work: OUTPUT is a new file (or an existing one with --overwrite), never an input."""
    if output:
        check_new_file(output, overwrite, inputs=inputs)


def write_result(output: str, result: dict[str, Any]) -> None:
    """The results as indented JSON in OUTPUT, written whole or not at all."""
    write_file_atomically(output, json.dumps(result, indent=2, ensure_ascii=False) + "\n")


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def mc_table(summary: dict[str, Any]) -> str:
    """Subjects, then categories, then the overall line: questions, correct, accuracy in percent."""

    def row(name: str, e: dict[str, Any]) -> list[str]:
        return [name, str(e["questions"]), str(e["correct"]), f"{100 * e['accuracy']:.2f}"]

    rows = [row(k, e) for k, e in summary["subjects"].items()]
    rows += [row(f"[{k}]", e) for k, e in summary["categories"].items()]
    rows.append(row("overall", summary["overall"]))
    return _table(["subject", "questions", "correct", "accuracy %"], rows)


def similarity_table(result: dict[str, Any], metrics: list[str] | tuple[str, ...]) -> str:
    """One line per metric: its mean score."""
    return _table(["metric", "score"], [[m, f"{result[m]:.2f}"] for m in metrics])
