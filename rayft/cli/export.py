"""`rayft export`: a run directory as one standalone model."""

from __future__ import annotations

import click


@click.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "-o", "--output", required=True, type=click.Path(file_okay=False), help="Directory for the exported model."
)
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest safetensors shard (e.g. 2GB, 500MB).")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    help="Cast the weights (default: as trained; merged adapters are float32).",
)
@click.option("--ollama", is_flag=True, help="Also write an Ollama Modelfile.")
@click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Run the base model's own Python code from its directory "
    "(models that need it); off unless given here, whatever the run directory says.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an earlier export in OUTPUT (a directory holding files rayft did not write is refused either way).",
)
def export(
    run_dir: str,
    output: str,
    max_shard_size: str,
    dtype: str | None,
    ollama: bool,
    trust_remote_code: bool,
    overwrite: bool,
) -> None:
    """Write the rayft run RUN_DIR as one standalone model: an adapter merged into its base (a QLoRA
    base dequantized first), safetensors shards, tokenizer, chat_template.jinja, a reward model's value head.
    OUTPUT must be new or empty (or an earlier export, with --overwrite); it appears whole or not at all.

    RUN_DIR may also be one of a run's checkpoints (RUN_DIR/checkpoint_...): a full-parameter run's ZeRO
    partitions are written weight by weight from the fp32 master copy (cast with --dtype), on one machine, never
    holding the model or the optimizer's state whole; an adapter run's adapter is merged into its base.

    Example: rayft export outputs/sft-lora -o exported/sft --dtype bfloat16 --ollama
    """
    from rayft_core.export import export_model

    dest = export_model(
        run_dir,
        output,
        max_shard_size=max_shard_size,
        dtype=dtype,
        ollama=ollama,
        trust_remote_code=trust_remote_code,
        overwrite=overwrite,
    )
    click.echo(f"exported: {dest}")
