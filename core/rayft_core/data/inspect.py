"""Human views of tokenized rows: the trained-on tokens marked, and a token-length histogram."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rayft_core.data import IGNORE_INDEX

_ON, _OFF = "\033[1;32m", "\033[0m"  # bold green on a terminal


def trained_spans(
    tokenizer: Any, input_ids: Sequence[int], labels: Sequence[int], position_ids: Sequence[int] | None = None
) -> list[tuple[int, bool, str]]:
    """The row as (example, trained, text) spans: runs of tokens that carry a loss or do not, decoded; the example
    number (from 1) counts the examples packed into the row (always 1 when unpacked)."""
    spans: list[tuple[int, bool, str]] = []
    run: list[int] = []
    trained, example = False, 1

    def flush() -> None:
        if run:
            spans.append((example, trained, tokenizer.decode(run)))
            run.clear()

    for i, (token, label) in enumerate(zip(input_ids, labels)):
        if position_ids is not None and position_ids[i] == 0 and i > 0:
            flush()
            example += 1
        if (label != IGNORE_INDEX) != trained:
            flush()
            trained = not trained
        run.append(int(token))
    flush()
    return spans


def mark_trained(
    tokenizer: Any,
    input_ids: Sequence[int],
    labels: Sequence[int],
    color: bool,
    position_ids: Sequence[int] | None = None,
) -> str:
    """The decoded row with the tokens that carry a loss marked: green on a terminal, else «...».

    Packed rows show each example on its own line after a '── example N ──' rule.
    """
    start, end = (_ON, _OFF) if color else ("«", "»")
    parts: list[str] = []
    shown = 0
    for example, trained, text in trained_spans(tokenizer, input_ids, labels, position_ids):
        if position_ids is not None and example != shown:
            parts.append(f"{'' if example == 1 else chr(10)}── example {example} ──\n")
            shown = example
        parts.append(f"{start}{text}{end}" if trained else text)
    return "".join(parts)


def histogram_counts(lengths: Sequence[int], max_len: int, bins: int = 8) -> list[tuple[int, int, int]]:
    """Rows per token-length bucket: (lowest, highest, rows) for ``bins`` equal buckets up to max_len (longer rows
    count in the last)."""
    step = max(1, -(-max_len // bins))
    counts = [0] * bins
    for n in lengths:
        counts[min(n // step, bins - 1)] += 1
    return [(b * step, max_len if b == bins - 1 else (b + 1) * step - 1, c) for b, c in enumerate(counts)]


def histogram(lengths: Sequence[int], max_len: int, bins: int = 8, width: int = 40) -> str:
    """Rows per token-length bucket, as bars."""
    if not lengths:
        return "(no rows)"
    buckets = histogram_counts(lengths, max_len, bins)
    top = max(c for _, _, c in buckets)
    return "\n".join(f"{lo:>6}-{hi:<6} {'█' * round(width * c / top):<{width}} {c:,}" for lo, hi, c in buckets)
