"""The text of `rayft data preview`: tokenized rows rendered with their trained-on tokens marked, then the
data report (counts per dataset, packing fill), a token-length histogram and the bad rows.

Pure functions over rows already tokenized and a DataReport: the CLI prints what they return.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rayft_core.data.inspect import histogram, mark_trained
from rayft_core.data.report import DataReport


def render_row(tokenizer: Any, row: dict[str, Any], number: int, color: bool) -> list[str]:
    """Row NUMBER (1-based) as lines: one rule and text per token list (input_ids, chosen_/rejected_ for
    pairs, kl_ for KTO's mismatched answer), the trained-on tokens in green (color) or within «»."""
    lines = []
    source = f" from {row['dataset']}" if "dataset" in row else ""  # a streamed interleave's rows name theirs
    for part in (c.removesuffix("input_ids") for c in row if c.endswith("input_ids")):
        name = f" {part.rstrip('_')}{source}" if part else source
        ids = row[part + "input_ids"]
        if part + "labels" not in row:  # an RL prompt: the model answers it, nothing in it is trained on
            lines.append(f"─── row {number}{name} ({len(ids)} tokens; generated from) ───")
            lines.append(tokenizer.decode(ids))
            lines.append(f"    reference answer (for reward functions): {row.get('reference')!r}")
            continue
        lines.append(
            f"─── row {number}{name} ({len(ids)} tokens; trained-on tokens {'in green' if color else 'in «»'}) ───"
        )
        lines.append(mark_trained(tokenizer, ids, row[part + "labels"], color, row.get("position_ids")))
    if "kto_tag" in row:
        lines.append(f"    desirable: {row['kto_tag']}")
    return lines


def render_report(report: DataReport, max_seq_len: int) -> str:
    """Counts per dataset and packing fill, the tokens-per-row histogram, then the bad rows (or that there are none)."""
    return "\n".join(
        [
            "\n" + report.table(),
            "\ntokens per row:\n" + histogram(report.lengths, max_seq_len),
            "\n" + (report.bad_rows() if report.num_bad else "no unusable rows"),
        ]
    )


def render_preview(
    tokenizer: Any, rows: Sequence[dict[str, Any]], report: DataReport, max_seq_len: int, color: bool
) -> str:
    """All of `rayft data preview`'s output: every row rendered, then the report."""
    lines = [line for i, row in enumerate(rows, 1) for line in render_row(tokenizer, row, i, color)]
    return "\n".join([*lines, render_report(report, max_seq_len)])
