"""Streams of rows drawn together by probability, resumable at any row: the sampler of a streamed run.

A worker reads each of its datasets as an ordered stream of rows (rayft.stream), each row tagged with the chunk
it came from: where that chunk starts in the files (a key the reader can seek to). The interleaver draws the
next row's dataset with a seeded generator and remembers, per dataset, the chunk in progress and how many of
its rows were taken. That state (``state()``, plain JSON) is all a checkpoint needs: ``restore`` reopens each
stream at its chunk, skips the rows already taken, and the generator continues where it stood, so the rows
after a restart are those an uninterrupted run would have drawn, none read again from the start.

Stopping rules, per pass (an epoch of the stream), as `datasets.interleave_datasets`:
- concat: the datasets one after the other;
- first_exhausted: the pass ends at the first draw from a dataset with nothing left;
- all_exhausted: a dataset that runs out starts again, until every one has run out once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rayft_core.errors import UserInputError

# open_stream(dataset, chunk): dataset's rows as (chunk key, row), from the start of ``chunk`` (None: the start)
OpenStream = Callable[[int, Any], Iterator[tuple[Any, Any]]]


@dataclass
class Cursor:
    """Where one dataset's stream stands in the pass in progress."""

    chunk: Any = None  # the key of the chunk in progress (None: nothing taken yet)
    taken: int = 0  # rows of that chunk already drawn
    exhausted: bool = False  # ran out in this pass (all_exhausted: and started again)


class Interleaver:
    """Rows drawn from several streams (``open_stream``) by ``probabilities`` (None: equal), pass after pass."""

    def __init__(
        self, open_stream: OpenStream, labels: list[str], probabilities: list[float] | None, mode: str, seed: int
    ):
        k = len(labels)
        self.open_stream, self.labels, self.mode = open_stream, labels, mode
        p = np.asarray(probabilities if probabilities else [1 / k] * k, dtype=np.float64)
        self.cumulative = np.cumsum(p / p.sum())
        self.live = p > 0  # a dataset drawn with probability 0 never ends a pass
        self.rng = np.random.default_rng(seed)
        self.cursors = [Cursor() for _ in labels]
        self.drawn = [0] * k  # rows drawn from each dataset over the whole run (the realised shares)
        self.passes = 0  # passes completed
        self._streams: list[Iterator[tuple[Any, Any]] | None] = [None] * k

    def rows(self) -> Iterator[tuple[int, Any]]:
        """One pass: (dataset index, row) until the stopping rule ends it; the next call starts the next pass."""
        while (i := self._draw()) is not None:
            row = self._next(i)
            if row is None:  # dataset i ran out
                self.cursors[i].exhausted = True
                if self.mode == "first_exhausted" or (self.mode == "all_exhausted" and self._all_ran_out()):
                    break
                if self.mode == "concat":
                    continue
                self.cursors[i] = Cursor(exhausted=True)  # all_exhausted: it starts again
                self._streams[i] = None
                row = self._next(i)
                if row is None:
                    raise UserInputError(f"the streamed dataset {self.labels[i]} gave no rows")
            self.drawn[i] += 1
            yield i, row
        self.passes += 1
        self.cursors = [Cursor() for _ in self.labels]
        self._streams = [None] * len(self.labels)

    def _draw(self) -> int | None:
        if self.mode == "concat":
            return next((i for i, c in enumerate(self.cursors) if not c.exhausted), None)
        return int(np.searchsorted(self.cumulative, self.rng.random(), side="right").clip(0, len(self.labels) - 1))

    def _all_ran_out(self) -> bool:
        return all(c.exhausted or not live for c, live in zip(self.cursors, self.live))

    def _next(self, i: int) -> Any | None:
        """The next row of dataset i (None at its end), its cursor moved past it."""
        cursor = self.cursors[i]
        if self._streams[i] is None:
            self._streams[i] = self._reopen(i, cursor)
        item = next(self._streams[i], None)
        if item is None:
            return None
        chunk, row = item
        if chunk == cursor.chunk:
            cursor.taken += 1
        else:
            cursor.chunk, cursor.taken = chunk, 1
        return row

    def _reopen(self, i: int, cursor: Cursor) -> Iterator[tuple[Any, Any]]:
        """Dataset i's stream from its cursor: from the start of the chunk in progress, less the rows taken."""
        stream = self.open_stream(i, cursor.chunk)
        for _ in range(cursor.taken):
            item = next(stream, None)
            if item is None or item[0] != cursor.chunk:
                raise UserInputError(
                    f"the streamed dataset {self.labels[i]} changed since the checkpoint: its chunk at "
                    f"{cursor.chunk} no longer holds the {cursor.taken} rows trained from it"
                )
        return stream

    def close(self) -> None:
        """Stop reading: every open stream is closed (its readers stop)."""
        for stream in self._streams:
            if stream is not None and hasattr(stream, "close"):
                stream.close()
        self._streams = [None] * len(self.labels)

    def shares(self) -> dict[str, float]:
        total = sum(self.drawn)
        return {label: n / total for label, n in zip(self.labels, self.drawn)} if total else {}

    def state(self) -> dict[str, Any]:
        """Where every stream stands and the generator's state: JSON, for a checkpoint."""
        return {
            "labels": self.labels,
            "rng": self.rng.bit_generator.state,
            "cursors": [asdict(c) for c in self.cursors],
            "drawn": self.drawn,
            "passes": self.passes,
        }

    def restore(self, state: dict[str, Any]) -> None:
        if state["labels"] != self.labels:
            raise UserInputError(
                f"the checkpoint streamed the datasets {state['labels']}, this run names {self.labels}; "
                "resume with the datasets it was trained on"
            )
        self.rng.bit_generator.state = state["rng"]
        self.cursors = [Cursor(**c) for c in state["cursors"]]
        for c in self.cursors:  # JSON made the chunk keys lists; the reader gives tuples
            c.chunk = tuple(c.chunk) if isinstance(c.chunk, list) else c.chunk
        self.drawn, self.passes = list(state["drawn"]), state["passes"]
        self._streams = [None] * len(self.labels)
