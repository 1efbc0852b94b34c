"""What tokenizing a run's data gave, per dataset: examples, rows, tokens and the rows that could not be used
(counted by reason, the first few shown with file and row); and the rule for how many bad rows a run allows."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rayft_core.data.collate import padding_value
from rayft_core.data.formats import DataError
from rayft_core.data.registry import DatasetError

logger = logging.getLogger(__name__)

MAX_ERRORS_SHOWN = 5
REPORT_COLUMNS = ("source", "num_tokens", "num_examples", "error")  # what a report reads of tokenized rows


@dataclass
class DatasetReport:
    """What one dataset contributed, and what it could not."""

    label: str
    examples: int = 0  # tokenized examples (a long pre-training document gives several)
    rows: int = 0  # training rows after packing
    tokens: int = 0
    bad: dict[str, int] = field(default_factory=dict)  # reason -> count
    shown: list[str] = field(default_factory=list)  # the first few bad rows, with file and row

    @property
    def num_bad(self) -> int:
        return sum(self.bad.values())


@dataclass
class DataReport:
    datasets: list[DatasetReport]
    max_seq_len: int
    packing: bool
    lengths: list[int] = field(default_factory=list)  # tokens per training row (a sample, for the histogram)

    @property
    def rows(self) -> int:
        return sum(d.rows for d in self.datasets)

    @property
    def tokens(self) -> int:
        return sum(d.tokens for d in self.datasets)

    @property
    def num_bad(self) -> int:
        return sum(d.num_bad for d in self.datasets)

    @property
    def fill(self) -> float:
        """Non-pad tokens / all tokens when every row is padded to max_seq_len (packing efficiency)."""
        return self.tokens / max(self.rows * self.max_seq_len, 1)

    def count(self, batch: Any) -> None:
        """Add a batch of tokenized rows (a pyarrow table with REPORT_COLUMNS; ``source`` indexes datasets)."""
        import pyarrow.compute as pc

        sources = batch["source"].to_numpy()
        tokens = batch["num_tokens"].to_numpy()
        examples = batch["num_examples"].to_numpy()
        ok = pc.is_null(batch["error"]).to_numpy(zero_copy_only=False)
        for s in np.unique(sources):
            d = self.datasets[s]
            good = (sources == s) & ok
            d.rows += int(good.sum())
            d.tokens += int(tokens[good].sum())
            d.examples += int(examples[good].sum())
        if not ok.all():
            for s, e in zip(sources, batch["error"].to_pylist()):
                if e is not None:
                    d = self.datasets[s]
                    reason = error_reason(e)
                    d.bad[reason] = d.bad.get(reason, 0) + 1
                    if len(d.shown) < MAX_ERRORS_SHOWN:
                        d.shown.append(e)
        if len(self.lengths) < 100_000:
            self.lengths += tokens[ok].tolist()

    def table(self) -> str:
        lines = [f"{'dataset':<40} {'examples':>9} {'rows':>8} {'tokens':>11} {'bad':>6}"]
        for d in self.datasets:
            lines.append(f"{d.label[-40:]:<40} {d.examples:>9,} {d.rows:>8,} {d.tokens:>11,} {d.num_bad:>6,}")
        packed = (
            f"packing on: {self.fill:.1%} of {self.max_seq_len}-token rows hold tokens"
            if self.packing
            else f"packing off: rows average {self.tokens / max(self.rows, 1):.0f} tokens (max_seq_len {self.max_seq_len})"
        )
        return "\n".join(lines + [packed])

    def bad_rows(self) -> str:
        counts = Counter()
        for d in self.datasets:
            counts.update(d.bad)
        shown = [s for d in self.datasets for s in d.shown][:MAX_ERRORS_SHOWN]
        by_reason = ", ".join(f"{n:,} {reason}" for reason, n in counts.most_common())
        more = self.num_bad - len(shown)
        return (
            f"{self.num_bad:,} unusable rows ({by_reason}):\n"
            + "\n".join(f"  - {s}" for s in shown)
            + (f"\n  ... and {more:,} more" if more > 0 else "")
        )


def check_bad_rows(report: DataReport, max_fraction: float, section: str) -> None:
    total = sum(d.examples for d in report.datasets) + report.num_bad
    if report.num_bad == 0:
        if total == 0:
            raise DatasetError(f"{section}: the datasets hold no rows")
        return
    if report.rows == 0 or report.num_bad / max(total, 1) > max_fraction:
        limit = (
            "no usable rows remain"
            if report.rows == 0
            else f"that is {report.num_bad / total:.2%} of the rows; data.max_bad_fraction allows {max_fraction:.2%}"
        )
        raise DataError(f"{section}: {report.bad_rows()}\n{limit}; fix or remove them")
    logger.warning("%s: skipping %s", section, report.bad_rows())


class StreamChecker:
    """Bad rows met by a worker while streaming: counted, the run stopped past data.max_bad_fraction.

    A tolerated bad row stays in its batch as one padding token without a label: every worker
    must run the same number of equally many forward passes, so rows are masked, not removed.
    """

    def __init__(self, max_fraction: float, pad_token_id: int):
        self.max_fraction, self.pad = max_fraction, pad_token_id
        self.seen, self.bad, self.shown = 0, 0, []

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        errors = batch.pop("error")
        bad = [i for i, e in enumerate(errors) if e is not None]
        self.seen += len(errors)
        if not bad:
            return batch
        self.bad += len(bad)
        self.shown += [errors[i] for i in bad][: MAX_ERRORS_SHOWN - len(self.shown)]
        if self.bad / self.seen > self.max_fraction:
            raise DataError(
                f"{self.bad} of {self.seen} streamed rows cannot be used (data.max_bad_fraction "
                f"{self.max_fraction:.2%}):\n" + "\n".join(f"  - {s}" for s in self.shown)
            )
        for i in bad:  # the row becomes a masked one: one token without a label
            for c in batch:
                value = padding_value(c, self.pad)
                batch[c][i] = np.array(value) if isinstance(value, list) else value
        return batch


def error_reason(error: str) -> str:
    """'file: row N: reason: detail' -> reason."""
    parts = error.split(": ")
    return parts[2] if len(parts) > 3 and parts[1].startswith("row ") else parts[1] if len(parts) > 2 else "unreadable"
