"""`rayft data`: look at, and prepare, the training data of a run (no training).

rayft data preview run.yaml        rendered rows, counts, lengths, packing fill, bad rows
rayft data prepare run.yaml -o DIR tokenize once into Parquet that later runs train from
rayft data templates               the named chat templates
"""

from __future__ import annotations

import sys

import click

from rayft.cli._common import load_run, run_config_arguments


@click.group("data")
def data_group() -> None:
    """Look at, and prepare, the training data of a run (no training)."""


@data_group.command("preview")
@run_config_arguments
@click.option("-n", "--examples", default=3, show_default=True, help="Rows to show rendered.")
def data_preview(config_path: str, overrides: tuple[str, ...], examples: int) -> None:
    """Rendered rows with the trained-on tokens marked, counts per dataset, a token-length
    histogram, packing efficiency and the bad-row report of CONFIG_PATH's training data."""
    from rayft.checks import check_data_inputs
    from rayft.cluster import connect
    from rayft.data import preview
    from rayft_core.data.preview import render_preview
    from rayft_core.model.loader import load_tokenizer

    run = load_run(config_path, overrides).with_absolute_paths()
    check_data_inputs(run)  # before Ray starts
    connect()
    rows, report = preview(run, examples)
    tokenizer = load_tokenizer(run.model)
    click.echo(render_preview(tokenizer, rows, report, run.data.max_seq_len, color=sys.stdout.isatty()))


@data_group.command("prepare")
@run_config_arguments
@click.option(
    "-o",
    "--output",
    required=True,
    help="Directory (local, shared or s3://...) for the Parquet files: "
    "new or empty, or earlier prepared data with --overwrite.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace prepared data that rayft wrote in OUTPUT before (nothing else "
    "is ever deleted: a directory holding other files is refused).",
)
def data_prepare(config_path: str, overrides: tuple[str, ...], output: str, overwrite: bool) -> None:
    """Tokenize CONFIG_PATH's training data once and write it as Parquet (input_ids, labels with
    -100 where no loss, position_ids when packed) plus a manifest. Train from it with
    `data.train: [{path: OUTPUT}]` on any cluster that reads OUTPUT. With data.mix: interleave, the
    rows written are the interleaved ones (data.mix_probabilities, data.mix_stopping, train.seed)."""
    from rayft.checks import check_data_inputs
    from rayft.cluster import connect
    from rayft.data import prepare
    from rayft_core import ownership

    run = load_run(config_path, overrides).with_absolute_paths()
    ownership.check(output, ownership.PREPARED, overwrite, "--overwrite")  # before any work
    check_data_inputs(run)
    connect()
    report = prepare(run, output, overwrite)
    click.echo(report.table())
    click.echo(f"prepared {report.rows:,} rows ({report.tokens:,} tokens) in {output}")


@data_group.command("templates")
def data_templates() -> None:
    """The named chat templates (model.template), each shown rendering one short conversation."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from rayft_core.data.templates import TEMPLATES

    sample = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    for name, source in TEMPLATES.items():
        try:
            text = render_jinja_template(
                conversations=[sample], chat_template=source, bos_token="<bos>", eos_token="<eos>"
            )[0][0]
        except Exception as e:  # a template may refuse a system turn; say so instead of failing the list
            text = f"(cannot render this sample: {e})"
        click.echo(f"── {name} ──\n{text}\n")
