"""The Ray Data pipeline of a run: read -> align -> render + tokenize (in parallel tasks) -> materialize.

Each dataset of ``data.train`` is read lazily by Ray Data (json/jsonl/txt, a file, a directory or a
glob), aligned to the standard schema and tokenized by the stage's ``encode_rows`` in map tasks
that keep one tokenizer per process. The result is materialized once on the cluster's object
store, so every epoch and every worker reads tokens, never text.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from rayft_core.config import DatasetSpec, RunConfig
from rayft_core.data.formats import ALIGNERS, DataError
from rayft_core.errors import UserInputError
from rayft_core.model.loader import load_tokenizer
from rayft_core.train.stages import STAGES

logger = logging.getLogger(__name__)

TEXT_EXTENSIONS = (".txt",)
JSON_EXTENSIONS = (".json", ".jsonl")
MAX_ERRORS_SHOWN = 5


class DatasetError(UserInputError):
    """A dataset of the run cannot be read; the message names its config path."""


@dataclass(frozen=True)
class DataStats:
    num_rows: int
    num_tokens: int


def resolve_files(spec: DatasetSpec, key: str) -> list[str]:
    """A file, a directory (its data files) or a glob -> sorted file paths; none is an error."""
    path = Path(spec.path).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.name.endswith(JSON_EXTENSIONS + TEXT_EXTENSIONS))
    else:
        files = sorted(glob.glob(str(path))) if any(c in spec.path for c in "*?[") else ([str(path)] if path.is_file() else [])
    if not files:
        raise DatasetError(f"{key}.path: no data files at {spec.path!r}")
    bad = [f for f in files if not f.endswith(JSON_EXTENSIONS + TEXT_EXTENSIONS)]
    if bad:
        raise DatasetError(f"{key}.path: cannot read {bad[0]!r}; supported: {', '.join(JSON_EXTENSIONS + TEXT_EXTENSIONS)}")
    return files


@functools.lru_cache(maxsize=4)
def _run_and_tokenizer(run_json: str) -> tuple[RunConfig, Any]:
    """Validated once per Ray worker process, not once per batch."""
    run = RunConfig.model_validate_json(run_json)
    return run, load_tokenizer(run.model)


def _json_rows(file: dict[str, Any]) -> list[dict[str, Any]]:
    """One json/jsonl file -> its rows as raw JSON text with file and row number.

    Rows stay JSON text until they are aligned: Arrow's type inference would turn a string
    "42" into an integer and reject files whose rows differ in shape.
    """
    path, data = file["path"], file["bytes"]
    if path.endswith(".jsonl"):
        lines = data.decode("utf-8").splitlines()
        return [{"path": path, "row": i, "json": line} for i, line in enumerate(lines, 1) if line.strip()]
    try:
        rows = json.loads(data)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}); a .json file holds one array of rows, a .jsonl one row per line") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: a .json dataset must be an array of rows, got {type(rows).__name__}")
    return [{"path": path, "row": i, "json": json.dumps(r, ensure_ascii=False)} for i, r in enumerate(rows)]


def _parse(row: dict[str, Any]) -> dict[str, Any]:
    try:
        value = json.loads(row["json"])
    except json.JSONDecodeError as e:
        raise DataError(f"{row['path']}: row {row['row']}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise DataError(f"{row['path']}: row {row['row']}: expected an object, got {type(value).__name__}")
    return {**value, "path": row["path"], "__row__": row["row"]}


def _encode(batch: pa.Table, run_json: str, fmt: str, text_column: str) -> pa.Table:
    """Align and tokenize a batch. A bad row becomes an `error` entry (never dropped, never a crash
    of the task): the driver collects them all and stops the run naming each file and row."""
    run, tokenizer = _run_and_tokenizer(run_json)
    align = ALIGNERS[fmt]
    kwargs = {"text_column": text_column} if fmt == "text" else {}
    aligned, errors = [], []
    for i, row in enumerate(batch.to_pylist()):
        try:
            aligned.append(align(_parse(row) if "json" in row else row, i, **kwargs))
        except DataError as e:
            errors.append(str(e))
    encoded = STAGES[run.stage.name].encode_rows(aligned, tokenizer, run) if aligned else {"input_ids": [], "labels": []}
    ids = encoded["input_ids"] + [[] for _ in errors]
    return pa.table({
        "input_ids": pa.array(ids, type=pa.list_(pa.int32())),
        "labels": pa.array(encoded["labels"] + [[] for _ in errors], type=pa.list_(pa.int32())),
        "num_tokens": pa.array([len(x) for x in ids], type=pa.int32()),
        "error": pa.array([None] * len(encoded["input_ids"]) + errors, type=pa.string()),
    })


def _read(spec: DatasetSpec, files: list[str]) -> Any:
    import ray.data

    if all(f.endswith(TEXT_EXTENSIONS) for f in files):
        if spec.format != "text":
            raise DatasetError(f"format {spec.format!r} needs json/jsonl files, got text files")
        return ray.data.read_text(files)
    return ray.data.read_binary_files(files, include_paths=True).flat_map(_json_rows)


def build_train_dataset(run: RunConfig) -> tuple[Any, DataStats]:
    """The tokenized, materialized training set of a run, and its size."""
    run_json = run.model_dump_json()
    parts = []
    for i, spec in enumerate(run.data.train):
        key = f"data.train[{i}]"
        ds = _read(spec, resolve_files(spec, key))
        if spec.num_samples:
            ds = ds.limit(spec.num_samples)
        parts.append(ds.map_batches(_encode, batch_format="pyarrow", batch_size=256, zero_copy_batch=True,
                                    fn_kwargs={"run_json": run_json, "fmt": spec.format, "text_column": spec.text_column}))
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    if run.data.shuffle:
        ds = ds.random_shuffle(seed=run.train.seed)
    ds = ds.materialize()
    num_rows = num_tokens = 0
    errors: list[str] = []
    for b in ds.select_columns(["num_tokens", "error"]).iter_batches(batch_format="pyarrow", batch_size=None):
        num_rows += len(b)
        num_tokens += pc.sum(b["num_tokens"]).as_py() or 0
        errors += [e for e in b["error"].to_pylist() if e is not None]
    if errors:
        shown = "\n".join(f"  - {e}" for e in errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise DataError(f"{len(errors)} of {num_rows} training rows cannot be used; fix or remove them:\n{shown}{more}")
    if num_rows == 0:
        raise DatasetError("data.train: the datasets hold no rows")
    stats = DataStats(num_rows=num_rows, num_tokens=num_tokens)
    logger.info("training data: %s examples, %s tokens", f"{stats.num_rows:,}", f"{stats.num_tokens:,}")
    return ds, stats
