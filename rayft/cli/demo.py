"""`rayft demo`: an end-to-end run on this machine: a tiny model built on the spot, or a real one of yours."""

from __future__ import annotations

import click


@click.command()
@click.option(
    "--output",
    default=None,
    help="Directory for the demo's models and data.  [default: outputs/demo, or outputs/demo-model with --model]",
)
@click.option(
    "--model",
    default=None,
    help="A local instruct model (with a chat template), e.g. SmolLM2-135M-Instruct: teach it a new name with "
    "LoRA SFT instead of pre-training a tiny one.",
)
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(min=1),
    help="Ray Train workers for each run.  [default: 2; 1 with --model, which then gets all the cores]",
)
def demo(output: str | None, model: str | None, workers: int | None) -> None:
    """Pre-train a tiny Llama on generated text, teach it arithmetic with LoRA SFT, score it before and after; or,
    with --model, give a real instruct model a new identity and compare its answers before and after."""
    from rayft.demo import run_demo, run_model_demo

    if model:
        run_model_demo(output or "outputs/demo-model", model, workers or 1)
    else:
        run_demo(output or "outputs/demo", workers or 2)
