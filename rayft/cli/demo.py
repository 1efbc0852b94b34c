"""`rayft demo`: a tiny end-to-end run on this machine."""

from __future__ import annotations

import click


@click.command()
@click.option("--output", default="outputs/demo", show_default=True, help="Directory for the demo's models and data.")
@click.option(
    "--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Ray Train workers for each run."
)
def demo(output: str, workers: int) -> None:
    """Pre-train a tiny Llama on generated text, teach it arithmetic with LoRA SFT, score it before and after."""
    from rayft.demo import run_demo

    run_demo(output, workers)
