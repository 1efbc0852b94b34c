"""`rayft export`: a run directory as one standalone model."""

from __future__ import annotations

from typing import Any

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
    "--merge-with",
    "merge_with",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="Another finished run of the same base to merge with RUN_DIR (repeat for more): LoRA adapters and "
    "full-parameter runs, merged weight by weight.",
)
@click.option(
    "--merge-method",
    type=click.Choice(["linear", "ties", "dare_linear", "dare_ties"]),
    help="With --merge-with (default ties): how the runs' changes to the base combine: a weighted sum (task arithmetic), TIES (trim, elect sign, "
    "average the agreeing), or DARE (random drop and rescale) then either.",
)
@click.option(
    "--merge-weights", help="One weight per run, RUN_DIR first, comma-separated (default: 1 each; linear sums)."
)
@click.option(
    "--density",
    type=float,
    help="With --merge-with (default 0.5): ties keeps each run's largest changes, this share of them; dare keeps "
    "this share at random.",
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
    merge_with: tuple[str, ...],
    merge_method: str | None,
    merge_weights: str | None,
    density: float | None,
) -> None:
    """Write the rayft run RUN_DIR as one standalone model: an adapter merged into its base (a QLoRA
    base dequantized first), safetensors shards, tokenizer, chat_template.jinja, a reward model's value head.
    OUTPUT must be new or empty (or an earlier export, with --overwrite); it appears whole or not at all.

    RUN_DIR may also be one of a run's checkpoints (RUN_DIR/checkpoint_...): a full-parameter run's ZeRO
    partitions are written weight by weight from the fp32 master copy (cast with --dtype), on one machine, never
    holding the model or the optimizer's state whole; an adapter run's adapter is merged into its base.

    With --merge-with, RUN_DIR and the other runs (fine-tunes of one base) merge into one model: each run's change
    to the base combined by --merge-method (TIES, DARE, or a weighted sum), written weight by weight.

    Example: rayft export outputs/sft-lora -o exported/sft --dtype bfloat16 --ollama

    Example: rayft export outputs/math -o exported/merged --merge-with outputs/code --merge-method dare_ties --density 0.3
    """
    from rayft_core.export import export_model

    if merge_with or merge_method or merge_weights or density is not None:
        merge = {"--merge-method": merge_method, "--merge-weights": merge_weights, "--density": density}
        dest = _merge(
            [run_dir, *merge_with], output, merge, max_shard_size, dtype, ollama or trust_remote_code, overwrite
        )
        click.echo(f"merged: {dest}")
        return
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


def _merge(
    runs: list[str], output: str, merge: dict, max_shard_size: str, dtype: str | None, single: bool, overwrite: bool
) -> Any:
    """export --merge-with: RUN_DIR and the runs named merged (rayft_core.export.export_merged)."""
    from rayft_core.errors import UserInputError
    from rayft_core.export import export_merged

    if len(runs) == 1:
        given = ", ".join(flag for flag, value in merge.items() if value is not None)
        raise UserInputError(f"{given}: options of a merge; name the runs to merge with --merge-with")
    if single:
        raise UserInputError(
            "--merge-with: --ollama and --trust-remote-code apply to one run; export the merged model, then its Modelfile"
        )
    try:
        weights = [float(w) for w in merge["--merge-weights"].split(",")] if merge["--merge-weights"] else None
    except ValueError:
        raise UserInputError(f"--merge-weights: comma-separated numbers, got {merge['--merge-weights']!r}") from None
    density = 0.5 if merge["--density"] is None else merge["--density"]
    method = merge["--merge-method"] or "ties"
    return export_merged(runs, output, method, weights, density, max_shard_size, dtype, overwrite)
