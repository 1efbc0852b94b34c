"""`rayft eval`: score a model on multiple-choice benchmarks, or generated text against references.

    rayft eval mc --model outputs/sft-lora --task-dir examples/eval/mmlu --n-shot 5 --output mmlu.json
    rayft eval mc --model outputs/sft-lora --task-dir examples/eval/ceval --split val --lang zh
    rayft eval similarity outputs/predictions.jsonl --output scores.json

Both run in this process (no Ray): a benchmark is one batched forward pass per question batch, on the GPU
when there is one; the metrics are CPU work. The engine is rayft_core.eval.
"""

from __future__ import annotations

import json
from typing import Any

import click

from rayft.cliutil import or_exit

from rayft_core.data.templates import TEMPLATES
from rayft_core.ownership import check_new_file, write_file_atomically





def _check_output(output: str | None, overwrite: bool, *inputs: str) -> None:
    """Before any work: OUTPUT is a new file (or an existing one with --overwrite), never an input."""
    if output:
        or_exit(lambda: check_new_file(output, overwrite, inputs=inputs))


def _write(output: str | None, result: dict[str, Any]) -> None:
    if output:
        write_file_atomically(output, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        click.echo(f"wrote {output}")


_OVERWRITE = click.option("--overwrite", is_flag=True, help="Replace --output when it exists.")


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
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


@click.group("eval")
def eval_group() -> None:
    """Score a model: multiple-choice benchmarks (mc) and generation metrics (similarity)."""


@eval_group.command("mc")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A model directory, a rayft run's output, or a PEFT adapter directory (loaded on its base).")
@click.option("--task-dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A benchmark in MMLU, C-Eval or CMMLU layout: dev/ plus test/ or val/ CSVs, optional mapping.json.")
@click.option("--n-shot", default=5, show_default=True, type=click.IntRange(min=0), help="Solved dev examples before each question.")
@click.option("--subjects", help="Comma-separated subjects to evaluate [default: all of the split].")
@click.option("--lang", type=click.Choice(["en", "zh"]), default="en", show_default=True,
              help="Prompt language: en for MMLU, zh for C-Eval and CMMLU.")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True,
              help="The split to score (C-Eval's test answers are private: use val).")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1), help="Questions per forward pass.")
@click.option("--template", type=click.Choice(list(TEMPLATES)),
              help="A named chat template instead of the tokenizer's own (see `rayft data templates`).")
@click.option("--base-model", type=click.Path(exists=True, file_okay=False),
              help="The base of an adapter [default: adapter_config.json's base_model_name_or_path].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto", show_default=True,
              help="auto: bfloat16 on Ampere+ GPUs, float16 on older ones, float32 on CPU.")
@click.option("--output", type=click.Path(dir_okay=False), help="Write the results (and every prediction) as JSON here.")
@_OVERWRITE
def mc(model_dir: str, task_dir: str, n_shot: int, subjects: str | None, lang: str, split: str, batch_size: int,
       template: str | None, base_model: str | None, device: str, dtype: str, output: str | None, overwrite: bool) -> None:
    """Accuracy on a multiple-choice benchmark: the answer is the letter A-D with the highest next-token
    logit after the question, rendered with the model's chat template after N_SHOT solved examples.

    Example: rayft eval mc --model outputs/sft-lora --task-dir examples/eval/mmlu --n-shot 2
    """
    from rayft_core.eval.mc import STYLES, evaluate, load_eval_model, summarize
    from rayft_core.eval.tasks import load_task

    _check_output(output, overwrite)
    names = [s.strip() for s in subjects.split(",") if s.strip()] if subjects else None
    tasks = or_exit(lambda: load_task(task_dir, split, names))  # bad files stop here, before the model loads
    model, tokenizer = or_exit(lambda: load_eval_model(model_dir, base_model, template, dtype, device))
    max_len = getattr(model.config, "max_position_embeddings", None)
    results = or_exit(lambda: evaluate(model, tokenizer, tasks, n_shot, STYLES[lang], batch_size, max_len))
    summary = summarize(results)
    click.echo(mc_table(summary))
    _write(output, {"model": model_dir, "task_dir": task_dir, "split": split, "n_shot": n_shot, "lang": lang, **summary})


@eval_group.command("similarity")
@click.argument("predictions", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", type=click.Path(dir_okay=False), help="Write the mean scores as JSON here.")
@_OVERWRITE
def similarity(predictions: str, output: str | None, overwrite: bool) -> None:
    """ROUGE-1/2/L and BLEU-4 (x100, LLaMA-Factory's definitions, jieba segmentation for Chinese) of the
    `prediction` of every line of the JSONL file PREDICTIONS against its `reference`; prints the means.

    Example: rayft eval similarity examples/eval/predictions.jsonl
    """
    from rayft_core.eval.similarity import METRICS, compute_similarity, read_predictions

    _check_output(output, overwrite, predictions)
    result = or_exit(lambda: compute_similarity(read_predictions(predictions)))
    click.echo(_table(["metric", "score"], [[m, f"{result[m]:.2f}"] for m in METRICS]))
    click.echo(f"({result['rows']} rows)")
    _write(output, {"predictions": predictions, **result})
