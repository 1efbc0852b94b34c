"""The Ray Data pipeline of a run: read -> align -> template + tokenize -> pack -> mix -> split.

Every dataset of ``data.train`` (a dataset_info.json name, files named directly, a prepared
directory or a hub dataset) is resolved once, then read lazily by Ray Data (``rayft.sources``:
json, jsonl, csv, parquet and txt, local or on any filesystem pyarrow reaches). Align + tokenize +
pack run in parallel map tasks that keep one tokenizer per process.

A row that cannot be used becomes an ``error`` entry (never dropped, never a crashed task): the
driver counts them by reason, shows the first few with file and row, and stops the run when they
exceed ``data.max_bad_fraction``. By default the tokenized set is then materialized once on the
object store, so every epoch and worker reads tokens, never text; with ``data.streaming`` it
streams to the workers instead and they check the rows as they come.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from rayft.cluster import tokenize_concurrency
from rayft.prepared import cache_key, cached, check_prepared, materialized, streamed, write_prepared
from rayft.sources import (
    MANIFEST,
    RAW_SCHEMA,
    is_local_line_file,
    line_chunks,
    read_line_chunk,
    read_manifest,
    read_raw,
    resolve_files,
)
from rayft_core.config import DatasetSpec, RunConfig
from rayft_core.data.encode import drop_errors, encode_batch
from rayft_core.data.mixing import interleave_counts
from rayft_core.data.registry import DatasetError, check_stage_fit, resolve_spec
from rayft_core.data.report import REPORT_COLUMNS, DataReport, DatasetReport, check_bad_rows
from rayft_core.model.loader import load_tokenizer

logger = logging.getLogger(__name__)
# A small dataset is one block, fewer than the tokenizing tasks allowed; Ray warns of that every run.
warnings.filterwarnings(
    "ignore", message="The maximum number of concurrent tasks for 'MapBatches", category=UserWarning
)

ENCODE_BATCH = 256  # rows per map task batch: packing fills rows from one batch at a time


@dataclass
class RunData:
    """What the trainer gets: Ray datasets and their sizes (None when streamed)."""

    train: Any
    eval: Any | None
    train_rows: int | None
    eval_rows: int | None
    report: DataReport | None


# ----------------------------------------------------------------------------- encoding (in Ray tasks)


@functools.lru_cache(maxsize=4)
def run_and_tokenizer(run_json: str) -> tuple[RunConfig, Any]:
    """Validated once per Ray worker process, not once per batch."""
    # Ray Data runs one tokenizing task per CPU already; the tokenizer's own threads would only contend.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    run = RunConfig.model_validate_json(run_json)
    return run, load_tokenizer(run.model)


@functools.lru_cache(maxsize=16)
def spec_of(spec_json: str) -> DatasetSpec:
    return DatasetSpec.model_validate_json(spec_json)


def _encode(batch: pa.Table, run_json: str, spec_json: str, source: int) -> pa.Table:
    """A Ray Data map task: rayft_core.data.encode.encode_batch with this process's run and tokenizer."""
    run, tokenizer = run_and_tokenizer(run_json)
    return encode_batch(batch, run, tokenizer, spec_of(spec_json), source)


def _encode_lines(chunks: pa.Table, run_json: str, spec_json: str, source: int) -> pa.Table:
    """A Ray Data map task: chunks of local line files (rayft.sources.line_chunks) read and encoded,
    ENCODE_BATCH rows at a time, as the rows of other files are."""
    rows = [row for chunk in chunks.to_pylist() for row in read_line_chunk(chunk)]
    return pa.concat_tables(
        _encode(pa.Table.from_pylist(rows[i : i + ENCODE_BATCH], schema=RAW_SCHEMA), run_json, spec_json, source)
        for i in range(0, max(len(rows), 1), ENCODE_BATCH)
    )


# ----------------------------------------------------------------------------- the pipeline


@dataclass(frozen=True)
class ResolvedDataset:
    """One dataset of a section, resolved once: its spec with dataset_info.json applied, the name it is
    reported under, and the manifest when it is a folder written by `rayft data prepare`."""

    key: str  # its config path, for messages
    label: str
    spec: DatasetSpec
    manifest: dict | None


def resolve_datasets(run: RunConfig, section: str) -> list[ResolvedDataset]:
    """The datasets of data.train or data.eval, resolved and checked before anything is read."""
    out = []
    for i, given in enumerate(run.data.train if section == "data.train" else run.data.eval):
        key = f"{section}[{i}]"
        spec = resolve_spec(given, run.data.dataset_dir, key)
        manifest = read_manifest(spec.path) if spec.path else None
        if manifest is not None:
            check_prepared(spec, manifest, run, key)
        elif spec.format == "tokenized":
            raise DatasetError(
                f"{key}: {spec.path} holds no {MANIFEST}: it was not written by `rayft data prepare`, "
                "or the write did not finish"
            )
        else:
            check_stage_fit(spec, run.stage, key)
        out.append(ResolvedDataset(key, given.dataset or spec.label, spec, manifest))
    return out


def _tokenized(run: RunConfig, datasets: list[ResolvedDataset]) -> Any:
    """The lazy union of the tokenized datasets, each row tagged with its dataset's index (source)."""
    import ray.data

    run_json = run.model_dump_json()
    parts = []
    for i, d in enumerate(datasets):
        if d.manifest is not None:  # already tokenized: tag the rows and add the (empty) error column
            parts.append(
                ray.data.read_parquet(d.spec.path, file_extensions=["parquet"]).map_batches(
                    as_source, fn_kwargs={"source": i}, batch_format="pyarrow"
                )
            )
            continue
        encode = {
            "batch_format": "pyarrow",
            "compute": ray.data.TaskPoolStrategy(size=tokenize_concurrency()),
            "fn_kwargs": {"run_json": run_json, "spec_json": d.spec.model_dump_json(), "source": i},
        }
        files = resolve_files(d.spec.path, d.key) if d.spec.path else []
        # local .jsonl/.txt files: each task reads its own chunk of lines and tokenizes it (num_samples counts
        # rows, not lines: such a dataset is read as the others are)
        chunks = [c for f in files if is_local_line_file(f) for c in line_chunks(f)] if not d.spec.num_samples else []
        if chunks:
            parts.append(
                ray.data.from_items(chunks, override_num_blocks=len(chunks)).map_batches(_encode_lines, **encode)
            )
        rest = [f for f in files if not (chunks and is_local_line_file(f))]
        if rest or not files:
            ds = read_raw(d.spec, d.key, rest)
            if d.spec.num_samples:
                ds = ds.limit(d.spec.num_samples)
            parts.append(ds.map_batches(_encode, batch_size=ENCODE_BATCH, zero_copy_batch=True, **encode))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def as_source(batch: pa.Table, source: int) -> pa.Table:
    """Prepared rows, tagged with their dataset's index, with the (empty) error column of tokenized rows."""
    index = batch.schema.get_field_index("source")
    return batch.set_column(index, "source", pa.array([source] * len(batch), pa.int16())).append_column(
        "error", pa.nulls(len(batch), pa.string())
    )


def _report(ds: Any, labels: list[str], run: RunConfig) -> DataReport:
    """One pass over the small columns of a materialized set: counts per dataset and the bad rows."""
    report = DataReport([DatasetReport(label) for label in labels], run.data.max_seq_len, run.packing)
    for b in ds.select_columns(list(REPORT_COLUMNS)).iter_batches(batch_format="pyarrow", batch_size=None):
        report.count(b)
    return report


def _mix(ds: Any, report: DataReport, run: RunConfig) -> Any:
    """Interleave: keep n_i rows of dataset i (repeating it when n_i exceeds its size)."""
    sizes = [d.rows for d in report.datasets]
    counts = interleave_counts(sizes, run.data.mix_probabilities, run.data.mix_stopping, run.train.seed)
    parts = []
    for i, (size, n) in enumerate(zip(sizes, counts)):
        if n == 0:
            continue
        part = ds.filter(expr=f"source == {i}")
        copies = [part] * -(-n // size)
        parts.append((copies[0].union(*copies[1:]) if len(copies) > 1 else part).limit(n))
    logger.info(
        "interleaved %s rows: %s",
        f"{sum(counts):,}",
        ", ".join(f"{d.label} {n:,} of {d.rows:,}" for d, n in zip(report.datasets, counts)),
    )
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def interleaved(ds: Any, report: DataReport, run: RunConfig) -> tuple[Any, DataReport]:
    """A section's tokenized rows interleaved (see _mix), materialized, with the report counting what was kept."""
    mixed = _mix(ds, report, run).materialize()
    with_errors = mixed.map_batches(
        lambda b: b.append_column("error", pa.nulls(len(b), pa.string())), batch_format="pyarrow"
    )
    return mixed, _report(with_errors, [d.label for d in report.datasets], run)


def prepare(run: RunConfig, out: str, overwrite: bool) -> DataReport:
    """`rayft data prepare`: the training data tokenized into ``out``. Rows stream from the tokenizing tasks into
    Parquet; with data.mix: interleave they are the interleaved ones, which needs every dataset's size first (the
    tokenized sets are materialized)."""
    if run.data.mix == "interleave" and len(run.data.train) > 1:
        ds, report = tokenize_section(run, "data.train")
        ds, report = interleaved(ds, report, run)
        return write_prepared(out, run, materialized(ds, report), overwrite)
    datasets = resolve_datasets(run, "data.train")
    tokenized = _tokenized(run, datasets)
    return write_prepared(out, run, streamed(tokenized, [d.label for d in datasets], run), overwrite)


def tokenize_section(run: RunConfig, section: str) -> tuple[Any, DataReport]:
    """A section's datasets tokenized and materialized (or read from the cache), bad rows counted and removed."""
    datasets = resolve_datasets(run, section)
    # a prepared folder is already tokenized data: caching it again would only copy it
    cache = (
        f"{run.data.cache_dir.rstrip('/')}/{cache_key(run, datasets)}"
        if run.data.cache_dir and all(d.manifest is None for d in datasets)
        else None
    )
    if cache and (hit := cached(run, cache)) is not None:
        return hit
    ds = _tokenized(run, datasets).materialize()
    report = _report(ds, [d.label for d in datasets], run)
    check_bad_rows(report, run.data.max_bad_fraction, section)
    if report.num_bad:
        ds = ds.map_batches(drop_errors, batch_format="pyarrow").materialize()
    else:
        ds = ds.drop_columns(["error"])
    if cache:  # a folder named by its key: an unfinished write of the same key is rayft's to replace
        write_prepared(cache, run, materialized(ds, report), overwrite=True)
        logger.info("tokenized data cached in %s", cache)
    return ds, report


def preview(run: RunConfig, n: int) -> tuple[list[dict], DataReport]:
    """The first n training rows (as trained, before shuffling; a streamed interleave's as one worker draws them)
    and the report, bad rows included."""
    datasets = resolve_datasets(run, "data.train")
    ds = _tokenized(run, datasets).materialize()
    report = _report(ds, [d.label for d in datasets], run)
    if run.data.streaming and run.data.mix == "interleave" and len(datasets) > 1:
        from rayft.stream import first_rows  # rayft.stream reads through this module's encoding

        rows = first_rows(run, n)  # in the order a stream draws them
    else:
        rows = ds.map_batches(drop_errors, batch_format="pyarrow").take(n) if report.rows else []
    return [
        {k: list(v) if v is not None and k.endswith(("ids", "labels")) else v for k, v in r.items()} for r in rows
    ], report


def build_run_data(run: RunConfig) -> RunData:
    """The training (and evaluation) data of a run, ready for Ray Train."""
    if run.data.streaming:
        return _streamed(run)
    train, report = tokenize_section(run, "data.train")
    logger.info("training data:\n%s", report.table())
    if run.data.mix == "interleave" and len(run.data.train) > 1:
        train = _mix(train, report, run).materialize()
    evaluation = None
    if run.data.eval:
        evaluation, eval_report = tokenize_section(run, "data.eval")
    elif run.data.val_size:
        size = run.data.val_size if run.data.val_size < 1 else int(run.data.val_size)
        train, evaluation = train.train_test_split(size, shuffle=True, seed=run.train.seed)
    if run.data.shuffle:
        train = train.random_shuffle(seed=run.train.seed)
    train = train.drop_columns(["source"]).materialize()
    evaluation = evaluation.drop_columns(["source"]).materialize() if evaluation is not None else None
    return RunData(
        train=train,
        eval=evaluation,
        train_rows=train.count(),
        eval_rows=evaluation.count() if evaluation is not None else None,
        report=report,
    )


def _streamed(run: RunConfig) -> RunData:
    """Streamed training rows are read by each worker from its own share of the files (rayft.stream), so that a
    checkpoint can say where each stream stands; here they are only resolved and checked. Evaluation data
    streams through Ray Train's split."""
    evaluation = _tokenized(run, resolve_datasets(run, "data.eval")) if run.data.eval else None
    return RunData(
        train=None,
        eval=evaluation.drop_columns(["source"]) if evaluation else None,
        train_rows=None,
        eval_rows=None,
        report=None,
    )
