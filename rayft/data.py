"""The Ray Data pipeline of a run: read -> align -> render + tokenize (in parallel tasks) -> materialize.

Each dataset of ``data.train`` is read lazily by Ray Data (json/jsonl/txt, a file, a directory or a
glob), aligned to the standard schema and tokenized by the stage's ``encode_rows`` in map tasks
that keep one tokenizer per process. The result is materialized once on the cluster's object
store, so every epoch and every worker reads tokens, never text.
"""

from __future__ import annotations

import functools
import glob
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from rayft_core.config import DatasetSpec, ModelConfig, RunConfig
from rayft_core.data.formats import align_rows
from rayft_core.model.loader import load_tokenizer
from rayft_core.train.stages import STAGES

logger = logging.getLogger(__name__)

TEXT_EXTENSIONS = (".txt",)
JSON_EXTENSIONS = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


class DatasetError(ValueError):
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
def _tokenizer(model_json: str) -> Any:
    return load_tokenizer(ModelConfig.model_validate_json(model_json))  # once per worker process


def _encode(batch: pa.Table, run_json: str, fmt: str, text_column: str) -> pa.Table:
    run = RunConfig.model_validate_json(run_json)
    tokenizer = _tokenizer(run.model.model_dump_json())
    kwargs = {"text_column": text_column} if fmt == "text" else {}
    rows = align_rows(batch.to_pylist(), fmt, **kwargs)
    encoded = STAGES[run.stage.name].encode_rows(rows, tokenizer, run)
    ids = encoded["input_ids"]
    return pa.table({
        "input_ids": pa.array(ids, type=pa.list_(pa.int32())),
        "labels": pa.array(encoded["labels"], type=pa.list_(pa.int32())),
        "num_tokens": pa.array([len(x) for x in ids], type=pa.int32()),
    })


def _read(spec: DatasetSpec, files: list[str]) -> Any:
    import ray.data

    if all(f.endswith(TEXT_EXTENSIONS) for f in files):
        if spec.format != "text":
            raise DatasetError(f"format {spec.format!r} needs json/jsonl files, got text files")
        return ray.data.read_text(files, include_paths=True)
    lines = all(".jsonl" in f for f in files)
    return ray.data.read_json(files, lines=lines, include_paths=True)


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
    lengths = [b["num_tokens"] for b in ds.select_columns(["num_tokens"]).iter_batches(batch_format="pyarrow", batch_size=None)]
    stats = DataStats(num_rows=sum(len(x) for x in lengths), num_tokens=sum(pc.sum(x).as_py() or 0 for x in lengths))
    if stats.num_rows == 0:
        raise DatasetError("data.train: the datasets hold no rows")
    logger.info("training data: %s examples, %s tokens", f"{stats.num_rows:,}", f"{stats.num_tokens:,}")
    return ds, stats
