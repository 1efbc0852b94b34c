"""`rayft eval`: score a model on multiple-choice benchmarks, or generated text against references.

    rayft eval mc --model outputs/sft-lora --task-dir examples/eval/mmlu --n-shot 5 --output mmlu.json
    rayft eval similarity outputs/predictions.jsonl --output scores.json

The tables and the output file are rayft/eval.py's, the scoring rayft_core.eval's.
"""

from __future__ import annotations

from typing import Any

import click

from rayft.eval import check_output, mc_table, similarity_table, write_result
from rayft_core.data.templates import TEMPLATES


def _write(output: str | None, result: dict[str, Any]) -> None:
    if output:
        write_result(output, result)
        click.echo(f"wrote {output}")


_OVERWRITE = click.option("--overwrite", is_flag=True, help="Replace --output when it exists.")


@click.group("eval")
def eval_group() -> None:
    """Score a model: multiple-choice benchmarks (mc) and generation metrics (similarity)."""


@eval_group.command("mc")
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="A model directory, a rayft run's output, or a PEFT adapter directory (loaded on its base).",
)
@click.option(
    "--task-dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="A benchmark in MMLU, C-Eval or CMMLU layout: dev/ plus test/ or val/ CSVs, optional mapping.json.",
)
@click.option(
    "--n-shot",
    default=5,
    show_default=True,
    type=click.IntRange(min=0),
    help="Solved dev examples before each question.",
)
@click.option("--subjects", help="Comma-separated subjects to evaluate [default: all of the split].")
@click.option(
    "--lang",
    type=click.Choice(["en", "zh"]),
    default="en",
    show_default=True,
    help="Prompt language: en for MMLU, zh for C-Eval and CMMLU.",
)
@click.option(
    "--split",
    type=click.Choice(["test", "val"]),
    default="test",
    show_default=True,
    help="The split to score (C-Eval's test answers are private: use val).",
)
@click.option(
    "--batch-size", default=4, show_default=True, type=click.IntRange(min=1), help="Questions per forward pass."
)
@click.option(
    "--template",
    type=click.Choice(list(TEMPLATES)),
    help="A named chat template instead of the tokenizer's own (see `rayft data templates`).",
)
@click.option(
    "--base-model",
    type=click.Path(exists=True, file_okay=False),
    help="The base of an adapter [default: adapter_config.json's base_model_name_or_path].",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    default="auto",
    show_default=True,
    help="auto: bfloat16 on Ampere+ GPUs, float16 on older ones, float32 on CPU.",
)
@click.option(
    "--output", type=click.Path(dir_okay=False), help="Write the results (and every prediction) as JSON here."
)
@_OVERWRITE
def mc(
    model_dir: str,
    task_dir: str,
    n_shot: int,
    subjects: str | None,
    lang: str,
    split: str,
    batch_size: int,
    template: str | None,
    base_model: str | None,
    device: str,
    dtype: str,
    output: str | None,
    overwrite: bool,
) -> None:
    """Accuracy on a multiple-choice benchmark: the answer is the letter A-D with the highest next-token
    logit after the question, rendered with the model's chat template after N_SHOT solved examples.

    Example: rayft eval mc --model outputs/sft-lora --task-dir examples/eval/mmlu --n-shot 2
    """
    from rayft_core.eval.mc import STYLES, evaluate, load_eval_model, summarize
    from rayft_core.eval.tasks import load_task

    check_output(output, overwrite)
    names = [s.strip() for s in subjects.split(",") if s.strip()] if subjects else None
    tasks = load_task(task_dir, split, names)  # bad files stop here, before the model loads
    model, tokenizer = load_eval_model(model_dir, base_model, template, dtype, device)
    max_len = getattr(model.config, "max_position_embeddings", None)
    results = evaluate(model, tokenizer, tasks, n_shot, STYLES[lang], batch_size, max_len)
    summary = summarize(results)
    click.echo(mc_table(summary))
    _write(
        output, {"model": model_dir, "task_dir": task_dir, "split": split, "n_shot": n_shot, "lang": lang, **summary}
    )


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

    check_output(output, overwrite, predictions)
    result = compute_similarity(read_predictions(predictions))
    click.echo(similarity_table(result, METRICS))
    click.echo(f"({result['rows']} rows)")
    _write(output, {"predictions": predictions, **result})
