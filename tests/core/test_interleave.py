"""The streamed run's sampler (rayft_core.data.interleave): the stopping rules, the realised shares, and a
restore from its state at any row that continues exactly as the uninterrupted sampler does."""

from __future__ import annotations

import json

import pytest

from rayft_core.data.interleave import Interleaver
from rayft_core.errors import UserInputError

CHUNK = 4


def _streams(sizes: list[int], opened: list | None = None):
    """open_stream over datasets of ``sizes`` rows ("d<i>-<row>"), in chunks of CHUNK rows keyed by their first row;
    ``opened`` records (dataset, chunk) of every open."""

    def open_stream(i: int, chunk):
        if opened is not None:
            opened.append((i, chunk))
        first = chunk[0] if chunk is not None else 0
        for row in range(first, sizes[i]):
            yield (row - row % CHUNK,), f"d{i}-{row}"

    return open_stream


def _take(interleaver: Interleaver, n: int, passes: int = 1) -> list[str]:
    out = []
    for _ in range(passes):
        out += [row for _, row in interleaver.rows()]
    return out[:n] if n else out


def test_the_stopping_rules_end_a_pass_as_interleave_datasets_does():
    sizes = [10, 40]
    first = _take(Interleaver(_streams(sizes), ["a", "b"], [0.5, 0.5], "first_exhausted", 0), 0)
    assert sum(r.startswith("d0") for r in first) == 10  # ended at the draw after d0's last row
    assert len(set(first)) == len(first)
    every = _take(Interleaver(_streams(sizes), ["a", "b"], [0.5, 0.5], "all_exhausted", 0), 0)
    assert {f"d1-{r}" for r in range(40)} <= set(every)  # the longer one ran out once
    assert sum(r.startswith("d0") for r in every) > 10  # the shorter one started again
    concat = _take(Interleaver(_streams(sizes), ["a", "b"], None, "concat", 0), 0)
    assert concat == [f"d0-{r}" for r in range(10)] + [f"d1-{r}" for r in range(40)]


def test_a_new_pass_starts_every_stream_again():
    interleaver = Interleaver(_streams([6, 6]), ["a", "b"], None, "concat", 0)
    assert _take(interleaver, 0, passes=2) == 2 * ([f"d0-{r}" for r in range(6)] + [f"d1-{r}" for r in range(6)])
    assert interleaver.passes == 2


def test_the_realised_shares_are_within_two_points_of_the_asked_probabilities():
    probabilities = [0.7, 0.2, 0.1]
    interleaver = Interleaver(_streams([10**6] * 3), ["a", "b", "c"], probabilities, "first_exhausted", 3)
    rows = interleaver.rows()
    for _ in range(4000):
        next(rows)
    for (label, share), p in zip(interleaver.shares().items(), probabilities):
        assert share == pytest.approx(p, abs=0.02), label
    assert sum(interleaver.drawn) == 4000


def test_zero_probability_datasets_are_never_drawn_and_never_end_a_pass():
    interleaver = Interleaver(_streams([8, 1]), ["a", "b"], [1.0, 0.0], "all_exhausted", 0)
    assert _take(interleaver, 0) == [f"d0-{r}" for r in range(8)]


@pytest.mark.parametrize("mode", ["first_exhausted", "all_exhausted", "concat"])
@pytest.mark.parametrize("stop_at", [0, 1, 5, 13, 29])
def test_a_restore_from_any_row_continues_exactly_without_reading_from_the_start(mode, stop_at):
    sizes = [9, 23]
    probabilities = None if mode == "concat" else [0.3, 0.7]
    expected = _take(Interleaver(_streams(sizes), ["a", "b"], probabilities, mode, 7), 0, passes=3)
    before = Interleaver(_streams(sizes), ["a", "b"], probabilities, mode, 7)
    seen, passes = [], 0
    rows = before.rows()
    while len(seen) < stop_at:
        item = next(rows, None)
        if item is None:
            passes += 1
            rows = before.rows()
            continue
        seen.append(item[1])
    state = json.loads(json.dumps(before.state()))  # as a checkpoint keeps it

    opened: list = []
    after = Interleaver(_streams(sizes, opened), ["a", "b"], probabilities, mode, 7)
    after.restore(state)
    rest = []
    for _ in range(3 - passes):
        rest += [row for _, row in after.rows()]
    assert seen + rest == expected
    # a stream still in progress is opened again at its chunk in progress, never at its start
    for i, cursor in enumerate(state["cursors"]):
        if cursor["chunk"] is not None and not cursor["exhausted"]:
            assert next(chunk for j, chunk in opened if j == i) == tuple(cursor["chunk"])


def test_a_restore_into_other_datasets_or_changed_data_is_refused():
    state = Interleaver(_streams([8, 8]), ["a", "b"], None, "concat", 0).state()
    with pytest.raises(UserInputError, match=r"streamed the datasets \['a', 'b'\]"):
        Interleaver(_streams([8]), ["a"], None, "concat", 0).restore(state)
    interleaver = Interleaver(_streams([8, 8]), ["a", "b"], None, "concat", 0)
    rows = interleaver.rows()
    for _ in range(3):
        next(rows)
    state = interleaver.state()
    shorter = Interleaver(_streams([2, 8]), ["a", "b"], None, "concat", 0)
    shorter.restore(state)
    with pytest.raises(UserInputError, match="changed since the checkpoint"):
        next(shorter.rows())
