"""`rayft models`: the architecture matrix (docs/models.md), which model families rayft is proven to train."""

from __future__ import annotations

import click


@click.command("models")
@click.argument("model_type", required=False)
def models(model_type: str | None) -> None:
    """Every decoder LLM family of transformers and what rayft was shown to do with it (LoRA SFT, full
    fine-tuning under ZeRO-3, DPO, merge/export, vLLM), from tiny random models of each; MODEL_TYPE (a
    config.json's model_type, e.g. mixtral) prints that family's row and why a check fails.

    The table is rebuilt by `python -m rayft_core.model.matrix --write docs/models.md`.
    """
    from rayft_core.model.matrix import describe_family, load, render_text

    data = load()
    click.echo(describe_family(data, model_type) if model_type else render_text(data))
