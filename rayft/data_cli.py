"""`rayft data`: look at, and prepare, the training data of a run (no training).

    rayft data preview run.yaml        rendered rows, counts, lengths, packing fill, bad rows
    rayft data prepare run.yaml -o DIR tokenize once into Parquet that later runs train from
    rayft data templates               the named chat templates
"""

from __future__ import annotations

import sys

import click

from rayft.cliutil import load_run, or_exit


@click.group("data")
def data_group() -> None:
    """Look at, and prepare, the training data of a run (no training)."""


@data_group.command("preview")
@click.argument("config_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("-n", "--examples", default=3, show_default=True, help="Rows to show rendered.")
def data_preview(config_path: str, overrides: tuple[str, ...], examples: int) -> None:
    """Rendered rows with the trained-on tokens marked, counts per dataset, a token-length
    histogram, packing efficiency and the bad-row report of CONFIG_PATH's training data."""
    from rayft.checks import check_data_inputs
    from rayft.cluster import connect
    from rayft.data import preview
    from rayft_core.data.inspect import histogram, mark_trained
    from rayft_core.model.loader import load_tokenizer

    run = load_run(config_path, overrides).with_absolute_paths()
    or_exit(lambda: check_data_inputs(run))  # before Ray starts
    connect()
    rows, report = or_exit(lambda: preview(run, examples))
    tokenizer = load_tokenizer(run.model)
    color = sys.stdout.isatty()
    for i, row in enumerate(rows, 1):
        # one part per token list: input_ids, or chosen_/rejected_ for pairs, or kl_ for KTO's mismatched answer
        for part in (c.removesuffix("input_ids") for c in row if c.endswith("input_ids")):
            name = f" {part.rstrip('_')}" if part else ""
            if part + "labels" not in row:  # an RL prompt: the model answers it, nothing in it is trained on
                click.echo(f"─── row {i}{name} ({len(row[part + 'input_ids'])} tokens; generated from) ───")
                click.echo(tokenizer.decode(row[part + "input_ids"]))
                click.echo(f"    reference answer (for reward functions): {row.get('reference')!r}")
                continue
            click.echo(f"─── row {i}{name} ({len(row[part + 'input_ids'])} tokens; trained-on tokens "
                       f"{'in green' if color else 'in «»'}) ───")
            click.echo(mark_trained(tokenizer, row[part + "input_ids"], row[part + "labels"], color, row.get("position_ids")))
        if "kto_tag" in row:
            click.echo(f"    desirable: {row['kto_tag']}")
    click.echo("\n" + report.table())
    click.echo("\ntokens per row:\n" + histogram(report.lengths, run.data.max_seq_len))
    click.echo("\n" + (report.bad_rows() if report.num_bad else "no unusable rows"))


@data_group.command("prepare")
@click.argument("config_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("-o", "--output", required=True, help="Directory (local, shared or s3://...) for the Parquet files: "
              "new or empty, or earlier prepared data with --overwrite.")
@click.option("--overwrite", is_flag=True, help="Replace prepared data that rayft wrote in OUTPUT before (nothing else "
              "is ever deleted: a directory holding other files is refused).")
def data_prepare(config_path: str, overrides: tuple[str, ...], output: str, overwrite: bool) -> None:
    """Tokenize CONFIG_PATH's training data once and write it as Parquet (input_ids, labels with
    -100 where no loss, position_ids when packed) plus a manifest. Train from it with
    `data.train: [{path: OUTPUT}]` on any cluster that reads OUTPUT."""
    from rayft.checks import check_data_inputs
    from rayft.cluster import connect
    from rayft.data import tokenize_section, write_prepared
    from rayft_core import ownership

    run = load_run(config_path, overrides).with_absolute_paths()
    or_exit(lambda: ownership.check(output, ownership.PREPARED, overwrite, "--overwrite"))  # before any work
    or_exit(lambda: check_data_inputs(run))
    connect()
    ds, report = or_exit(lambda: tokenize_section(run, "data.train"))
    or_exit(lambda: write_prepared(ds, output, run, report, overwrite=overwrite))
    click.echo(report.table())
    click.echo(f"prepared {report.rows:,} rows ({report.tokens:,} tokens) in {output}")


@data_group.command("templates")
def data_templates() -> None:
    """The named chat templates (model.template), each shown rendering one short conversation."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from rayft_core.data.templates import TEMPLATES

    sample = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello!"}]
    for name, source in TEMPLATES.items():
        try:
            text = render_jinja_template(conversations=[sample], chat_template=source, bos_token="<bos>",
                                         eos_token="<eos>")[0][0]
        except Exception as e:  # a template may refuse a system turn; say so instead of failing the list
            text = f"(cannot render this sample: {e})"
        click.echo(f"── {name} ──\n{text}\n")
