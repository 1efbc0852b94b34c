"""Folders of tokenized rows: written by `rayft data prepare` (and by the tokenizing cache, data.cache_dir), read
back as training data. Parquet files of the stage's columns (input_ids, labels, position_ids when packed, ...)
plus a manifest written last (rayft.sources.MANIFEST): what was prepared, how (stage, max_seq_len, packing,
tokenizer, template) and the report of each dataset. A folder without its manifest is an unfinished write and
is never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from rayft.sources import read_manifest, resolve_files, write_manifest
from rayft_core import ownership, storage
from rayft_core.config import DatasetSpec, RunConfig
from rayft_core.data.encode import drop_errors
from rayft_core.data.registry import DatasetError
from rayft_core.data.report import REPORT_COLUMNS, DataReport, DatasetReport, check_bad_rows

if TYPE_CHECKING:
    from rayft.data import ResolvedDataset

logger = logging.getLogger(__name__)
PREPARED_MARKER = ownership.PREPARED.markers[0]  # written first into a folder of prepared data
PREPARED_FILE_ROWS = 100_000  # rows per Parquet file when rows are written as they are tokenized


def check_prepared(spec: DatasetSpec, manifest: dict, run: RunConfig, key: str) -> None:
    """A folder written by `rayft data prepare` must have been prepared the way this run trains."""
    if manifest["max_seq_len"] > run.data.max_seq_len:
        raise DatasetError(
            f"{key}: {spec.path} was prepared with max_seq_len {manifest['max_seq_len']}, longer "
            f"than this run's {run.data.max_seq_len}; prepare it again"
        )
    if manifest["stage"] != run.stage.name:
        raise DatasetError(f"{key}: {spec.path} was prepared for stage {manifest['stage']}, not {run.stage.name}")
    if manifest["packing"] != run.packing:
        raise DatasetError(
            f"{key}: {spec.path} was prepared with packing {'on' if manifest['packing'] else 'off'}; "
            f"set data.packing: {str(manifest['packing']).lower()} or prepare it again"
        )


def write_prepared(
    out: str, run: RunConfig, write: Callable[[str], DataReport], overwrite: bool = False, flag: str = "--overwrite"
) -> DataReport:
    """A folder of prepared rows: ``write(folder)`` writes the Parquet files and returns the report of what it
    wrote; the manifest goes last. ``out`` must be new, empty, or (with ``overwrite``) earlier prepared data
    (rayft_core.ownership). A local directory is written beside it and renamed into place (a failed write leaves
    nothing, not even the directory when it was new); in a bucket the ownership marker goes first and the
    manifest last."""
    new = not storage.is_uri(out) and not Path(out).exists()
    ownership.claim(out, ownership.PREPARED, overwrite, flag)

    def finish(folder: str) -> DataReport:
        report = write(folder)
        manifest = {
            "stage": run.stage.name,
            "max_seq_len": run.data.max_seq_len,
            "packing": run.packing,
            "tokenizer": run.model.name_or_path,
            "template": run.model.template,
            "rows": report.rows,
            "tokens": report.tokens,
            "datasets": [asdict(d) for d in report.datasets],
        }
        write_manifest(folder, manifest)
        return report

    if storage.is_uri(out):
        storage.write_text(storage.join(out, PREPARED_MARKER), "rayft data prepare\n")
        return finish(out)
    try:
        with ownership.staged_dir(Path(out)) as staged:
            (staged / PREPARED_MARKER).write_text("rayft data prepare\n")
            return finish(str(staged))
    except BaseException:
        if new and Path(out).is_dir() and not any(Path(out).iterdir()):
            Path(out).rmdir()  # made by claim above, and still empty
        raise


def materialized(ds: Any, report: DataReport) -> Callable[[str], DataReport]:
    """A writer for write_prepared: a materialized set (bad rows removed) and its report."""

    def write(folder: str) -> DataReport:
        ds.write_parquet(folder)
        return report

    return write


def streamed(ds: Any, labels: list[str], run: RunConfig) -> Callable[[str], DataReport]:
    """A writer for write_prepared: tokenized rows (``error`` column included) written as they come out of the
    pipeline, counted on the way and the bad ones left out, so the set is never held whole, neither in the object
    store nor here. Too many bad rows (data.max_bad_fraction) fail the write."""

    def write(folder: str) -> DataReport:
        report = DataReport([DatasetReport(label) for label in labels], run.data.max_seq_len, run.packing)
        fs, root = storage.filesystem(folder)
        writer, files, in_file = None, 0, 0
        try:
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                report.count(batch.select(list(REPORT_COLUMNS)))
                good = drop_errors(batch)
                if not len(good):
                    continue
                if writer is None or in_file >= PREPARED_FILE_ROWS:
                    if writer is not None:
                        writer.close()
                    writer = pq.ParquetWriter(f"{root}/part-{files:05d}.parquet", good.schema, filesystem=fs)
                    files, in_file = files + 1, 0
                writer.write_table(good.cast(writer.schema))
                in_file += len(good)
        finally:
            if writer is not None:
                writer.close()
        check_bad_rows(report, run.data.max_bad_fraction, "data.train")
        return report

    return write


def cache_key(run: RunConfig, datasets: list[ResolvedDataset]) -> str:
    """Everything the tokenized rows depend on: the data (file sizes and times), the tokenizer, the template, the stage."""
    files = []
    specs = [d.spec for d in datasets]
    for d in datasets:
        spec = d.spec
        if spec.path and "://" not in spec.path:
            for f in resolve_files(spec.path, d.key):
                st = os.stat(f)
                files.append((f, st.st_size, st.st_mtime_ns))
        elif spec.hf_hub_url:  # a hub dataset: by its commit now, so a new commit is tokenized anew
            from rayft.hub import pin

            files.append((pin(spec.hf_hub_url, d.key),))
        else:  # remote files: named, not fingerprinted
            files.append((spec.label,))
    tok_dir = Path(run.model.name_or_path)
    tok_files = (
        [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(tok_dir.glob("*token*"))]
        if tok_dir.is_dir()
        else []
    )
    stage = run.stage.model_dump()
    key = {
        "v": 1,
        "specs": [s.model_dump() for s in specs],
        "files": files,
        "tokenizer": [run.model.name_or_path, tok_files],
        "template": [run.model.template, run.model.chat_template, run.model.add_special_tokens],
        "stage": stage,
        "max_seq_len": run.data.max_seq_len,
        "packing": run.packing,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached(run: RunConfig, out: str) -> tuple[Any, DataReport] | None:
    """The tokenized rows of a cache folder and their report, or None when it holds no finished write."""
    import ray.data

    manifest = read_manifest(out)
    if manifest is None:
        return None
    report = DataReport([DatasetReport(**d) for d in manifest["datasets"]], run.data.max_seq_len, run.packing)
    logger.info("tokenized data from the cache: %s", out)
    return ray.data.read_parquet(out, file_extensions=["parquet"]), report
