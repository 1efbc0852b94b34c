"""One batch of raw rows -> the stage's columns: align, tokenize and (when on) pack, in one pass per batch.

The cluster layer runs it in parallel map tasks (rayft.data); it knows nothing of Ray. Columns: the stage's,
plus num_tokens, num_examples, source (the dataset's index), error (None, or why the row is unusable: a bad
row stays a row, so it is counted and reported, never silently dropped), and position_ids when packed.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from rayft_core.config import DatasetSpec, RunConfig
from rayft_core.data.formats import DataError, RowError, align_row, where
from rayft_core.data.packing import pack_examples
from rayft_core.train.stage import Stage, sequence_columns
from rayft_core.train.stages import STAGES


def encode_batch(batch: pa.Table, run: RunConfig, tokenizer: Any, spec: DatasetSpec, source: int) -> pa.Table:
    """Align, tokenize and (when on) pack a batch of raw rows of ``spec``'s dataset (``source``: its index in the
    run's list); bad rows become error entries."""
    stage = STAGES[run.stage.name]
    aligned, errors = [], []
    for raw in batch.to_pylist():
        if raw["error"] is not None:
            errors.append(raw["error"])
            continue
        try:
            value = json.loads(raw["json"])
        except (json.JSONDecodeError, RecursionError) as e:  # RecursionError: nested deeper than Python parses
            errors.append(f"{raw['path']}: row {raw['row']}: invalid JSON: {e or 'nested too deeply'}")
            continue
        if not isinstance(value, dict):
            errors.append(
                f"{raw['path']}: row {raw['row']}: wrong type: a row must be an object, got {type(value).__name__}"
            )
            continue
        row = {**value, "path": raw["path"], "__row__": raw["row"]}
        try:
            aligned.append({"path": raw["path"], "__row__": raw["row"], **align_row(row, spec, run.stage)})
        except RowError as e:
            errors.append(str(e))
    enc = _encode_rows(stage, aligned, tokenizer, run, errors)
    sequences = sequence_columns(stage.columns)
    if run.packing and enc["input_ids"]:
        packed = pack_examples(enc["input_ids"], enc["labels"], run.data.max_seq_len)
        counts = packed.pop("num_examples")
        enc = packed
    else:
        counts = [1] * len(enc[stage.columns[0]])
    n_good, n_bad = len(counts), len(errors)
    columns = {c: pa.array(enc.get(c, []) + [[]] * n_bad, type=pa.list_(pa.int32())) for c in sequences}
    for c in stage.columns:
        if c not in sequences:  # a column of text, some of it null (an RL prompt without a reference answer), is text
            values = enc.get(c, []) + [None] * n_bad
            text = all(v is None or isinstance(v, str) for v in values)
            columns[c] = pa.array(values, type=pa.string() if text else None)
    columns.update(
        {
            "num_tokens": pa.array(
                [sum(len(enc[c][k]) for c in sequences if c.endswith("input_ids")) for k in range(n_good)]
                + [0] * n_bad,
                type=pa.int32(),
            ),
            "num_examples": pa.array(counts + [0] * n_bad, type=pa.int32()),
            "source": pa.array([source] * (n_good + n_bad), type=pa.int16()),
            "error": pa.array([None] * n_good + errors, type=pa.string()),
        }
    )
    if run.packing:
        columns["position_ids"] = pa.array(enc.get("position_ids", []) + [[]] * n_bad, type=pa.list_(pa.int32()))
    return pa.table(columns)


def _encode_rows(stage: Stage, rows: list[dict], tokenizer: Any, run: RunConfig, errors: list[str]) -> dict[str, list]:
    """The stage's encoding of a batch; examples with a label list that carries no loss after
    truncation are errors.

    When the batch fails as a whole (a template that cannot render one row), each row is encoded
    alone so the error names the row that caused it.
    """
    if not rows:  # Ray Data may hand over an empty block; tokenizers reject empty batches
        return {c: [] for c in stage.columns}
    try:
        enc = stage.encode_rows(rows, tokenizer, run)
    except DataError:
        enc = {c: [] for c in (*stage.columns, "row_of_example")}
        for i, row in enumerate(rows):
            try:
                one = stage.encode_rows([row], tokenizer, run)
            except DataError as e:
                errors.append(f"{where(row)}: template: {e}")
                continue
            for c in stage.columns:
                enc[c] += one[c]
            enc["row_of_example"] += [i] * len(one[stage.columns[0]])
    real = stage.real_rows(enc)  # an example with a label to learn past its first token in every labels column
    keep = [k for k, r in enumerate(real) if r]
    for k in (k for k, r in enumerate(real) if not r):
        errors.append(
            f"{where(rows[enc['row_of_example'][k]])}: nothing to learn: no trainable tokens are left after "
            f"truncation to max_seq_len {run.data.max_seq_len}"
        )
    return {c: [enc[c][k] for k in keep] for c in stage.columns}


def drop_errors(batch: pa.Table) -> pa.Table:
    """Tokenized rows without the bad ones, and without the error column."""
    return batch.filter(pc.is_null(batch["error"])).drop_columns(["error"])
