"""Where a run's raw rows come from: files (local or any pyarrow filesystem), the Hugging Face hub, and
the manifests of prepared folders. Each file becomes rows of {path, row, json, error}: rows stay JSON
text until aligned, so every format reaches the same aligner with its file and row number.
"""

from __future__ import annotations

import codecs
import csv
import fnmatch
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from rayft_core import storage
from rayft_core.config import DatasetSpec
from rayft_core.data.registry import DatasetError

READ_EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet", ".txt")
MANIFEST = "_rayft_data.json"  # beside prepared Parquet files; the "_" keeps Parquet readers from taking it as data
READ_BLOCK_ROWS = 2048  # raw rows per block after reading: the unit of parallel tokenizing
LINE_FILES = (".jsonl", ".txt")  # one row per line: cut into chunks by byte range, read in parallel
SCAN_BYTES = 8 * 2**20


def resolve_files(path: str, key: str) -> list[str]:
    """A file, a directory (its data files, recursively) or a glob, local or a URL -> sorted file paths."""
    if "://" in path and not path.startswith("file://"):
        files = _remote_files(path, key)
    else:
        local = Path(path.removeprefix("file://")).expanduser()
        if local.is_dir():
            files = sorted(str(p) for p in local.rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
        elif local.is_file():  # before globbing: a file named data[1].jsonl is that file, not a pattern
            files = [str(local)]
        elif any(c in path for c in "*?["):
            files = sorted(str(p) for p in Path("/").glob(str(local.absolute()).lstrip("/")) if p.is_file())
        else:
            files = []
    if not files:
        raise DatasetError(f"{key}: no data files at {path!r}")
    files = [f for f in files if not f.endswith(MANIFEST)]
    bad = [f for f in files if not f.endswith(READ_EXTENSIONS)]
    if bad:
        raise DatasetError(f"{key}: cannot read {bad[0]!r}; rayft reads {', '.join(READ_EXTENSIONS)}")
    return files


def _remote_files(url: str, key: str) -> list[str]:
    import pyarrow.fs as pafs

    pattern = any(c in url for c in "*?[")
    base = url.rsplit("/", 1)[0] if pattern else url
    try:
        fs, root = storage.filesystem(base)
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File:
            return [url]
        if info.type == pafs.FileType.NotFound:
            return []
        entries = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, ValueError, pa.ArrowException) as e:
        raise DatasetError(f"{key}: cannot list {url!r}: {e}") from None
    scheme = url.split("://", 1)[0]
    files = sorted(f"{scheme}://{e.path}" for e in entries if e.type == pafs.FileType.File)
    if url in files:  # a file whose name holds * ? or [ is that file, not a pattern
        return [url]
    return [f for f in files if fnmatch.fnmatch(f, url)] if pattern else files


def rows_of_file(file: dict[str, Any]) -> list[dict[str, Any]]:
    """One file -> its rows as JSON text with file and row number, or an error entry per bad row.

    Rows stay JSON text until aligned: Arrow's type inference would turn a string "42" into an
    integer and reject files whose rows differ in shape.
    """
    path, data = file["path"], file["bytes"]

    def ok(i: int, value: Any) -> dict:
        text = json.dumps(value, ensure_ascii=False, default=str)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\ud800" in a .json file), which Arrow cannot hold:
            text = json.dumps(value, default=str)  # kept escaped, the aligner reports the row naming the field
        return {"path": path, "row": i, "json": text, "error": None}

    def bad(i: int, reason: str, detail: str) -> dict:
        return _bad_row(path, i, reason, detail)

    if path.endswith(LINE_FILES):
        return [row for _, row in line_rows(path, data.split(b"\n"))]
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:  # a valid file with no rows is no rows; a corrupt, truncated or empty (0-byte) one is a bad row
            rows = pq.read_table(io.BytesIO(data)).to_pylist()
        except (pa.ArrowException, OSError, ValueError) as e:  # ValueError: also invalid UTF-8 in a string column
            detail = str(e).removeprefix("Could not open Parquet input source '<Buffer>': ")
            return [bad(0, "unreadable file", f"not a readable Parquet file, none of its rows are read ({detail})")]
        return [ok(i, r) for i, r in enumerate(rows)]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return [bad(0, "undecodable bytes", f"the file is not UTF-8 (byte {e.start})")]
    if path.endswith(".csv"):  # row numbers are data lines: the header is line 1
        return _csv_rows(text, ok, bad)
    try:
        rows = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        return [bad(0, "invalid JSON", f"{e}; a .json file holds one array of rows, a .jsonl file one row per line")]
    if not isinstance(rows, list):
        return [bad(0, "wrong type", f"a .json dataset must be an array of rows, got {type(rows).__name__}")]
    return [ok(i, r) for i, r in enumerate(rows)]


def line_chunks(path: str, rows: int = READ_BLOCK_ROWS) -> list[dict[str, Any]]:
    """A local .jsonl/.txt file cut into chunks of ``rows`` lines: {path, offset, length, first_line}.

    One pass counting newlines (about a second per GB) finds where each chunk starts, so every chunk is read,
    parsed and tokenized by a task of its own, straight from the file, and its rows keep their line numbers;
    the file's text never goes through the object store whole.
    """
    out, start, line, pending, base = [], 0, 1, 0, 0  # pending: lines since `start`; base: the block's offset
    with open(path, "rb") as f:
        while block := f.read(SCAN_BYTES):
            ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10) + (base + 1)  # the byte after each newline
            cut = ends[rows - pending - 1 :: rows]
            for end in cut.tolist():
                out.append({"path": path, "offset": start, "length": end - start, "first_line": line})
                start, line = end, line + rows
            pending += len(ends) - len(cut) * rows
            base += len(block)
    if start < base:
        out.append({"path": path, "offset": start, "length": base - start, "first_line": line})
    return out


def read_line_chunk(chunk: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of one chunk of line_chunks."""
    with open(chunk["path"], "rb") as f:
        f.seek(chunk["offset"])
        data = f.read(chunk["length"])
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    return [row for _, row in line_rows(chunk["path"], lines, chunk["first_line"], chunk["offset"])]


def is_local_line_file(path: str) -> bool:
    return path.endswith(LINE_FILES) and "://" not in path and os.path.isfile(path)


def line_rows(
    path: str, lines: Iterable[bytes], first_line: int = 1, offset: int = 0
) -> Iterator[tuple[int, dict[str, Any]]]:
    """The rows of a .jsonl or .txt file as (byte offset, row), from its ``lines`` (bytes, without their "\\n")
    that start at ``offset``, where line ``first_line`` starts (a streamed run resumes inside a file this way)."""
    for i, raw in enumerate(lines, first_line):
        at, offset = offset, offset + len(raw) + 1
        if at == 0 and raw.startswith(codecs.BOM_UTF8):  # a BOM is not part of row 1
            raw, at = raw[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            yield at, _bad_row(path, i, "undecodable bytes", f"not UTF-8 at byte {e.start}")
            continue
        if not line.strip():
            continue
        if path.endswith(".txt"):
            yield at, {"path": path, "row": i, "json": json.dumps({"text": line}, ensure_ascii=False), "error": None}
        else:  # parsed (and its JSON checked) where it is aligned, in parallel tasks
            yield at, {"path": path, "row": i, "json": line, "error": None}


def _bad_row(path: str, i: int, reason: str, detail: str) -> dict[str, Any]:
    return {"path": path, "row": i, "json": None, "error": f"{path}: row {i}: {reason}: {detail}"}


def _csv_rows(text: str, ok: Callable, bad: Callable) -> list[dict]:
    """A CSV file's rows, numbered from 2 (the header is row 1); a row the parser rejects is a bad row."""
    # The csv module refuses fields over csv.field_size_limit() (128 KiB by default; long documents
    # pass it). The whole file is in memory already, so no field can be longer than it: raising the
    # limit to its length costs nothing more. The limit is a C long (32 bits on Windows); it is only
    # ever raised, so readers in other threads are never cut short.
    csv.field_size_limit(max(csv.field_size_limit(), min(len(text), 2**31 - 1)))
    reader = csv.DictReader(io.StringIO(text, newline=""))  # newline="": csv's own rule for \r and \r\n
    out: list[dict] = []
    i = 1  # the row being read
    try:
        if reader.fieldnames is None:  # reads the header; None: an empty file
            return out
        i = 2
        for row in reader:
            out.append(ok(i, row))
            i += 1
    except csv.Error as e:  # the parser cannot resync reliably: later "rows" could be pieces of this one
        out.append(bad(i, "invalid CSV", f"{e}; the rows after it are not read"))
    return out


RAW_SCHEMA = pa.schema([("path", pa.string()), ("row", pa.int64()), ("json", pa.string()), ("error", pa.string())])


def read_raw(spec: DatasetSpec, key: str, files: list[str] | None = None) -> Any:
    """The raw rows of one dataset (of ``files`` of it, when given) as a lazy Ray dataset of {path, row, json,
    error}."""
    import ray.data

    if not files and spec.hf_hub_url:  # its files, read the way any other URL's are
        from rayft.hub import hub_files

        files = hub_files(spec, key)
    files = files or resolve_files(spec.path, key)
    rows, read = rows_of_file, {}
    if files[0].startswith("hf://"):  # pyarrow knows no hf:// filesystem: it is given huggingface_hub's
        files, read, rows = (
            [f[len("hf://") :] for f in files],
            {"filesystem": storage.filesystem(files[0])[0]},
            _hub_rows,
        )
    # A file is read by one task and gives one block; cut into blocks of READ_BLOCK_ROWS rows (streaming,
    # no shuffle), every CPU of the cluster aligns and tokenizes, even when the dataset is one big file.
    return (
        ray.data.read_binary_files(files, include_paths=True, **read)
        .flat_map(rows)
        .repartition(target_num_rows_per_block=READ_BLOCK_ROWS)
    )


def _hub_rows(file: dict[str, Any]) -> list[dict[str, Any]]:
    return rows_of_file({**file, "path": f"hf://{file['path']}"})


def read_manifest(folder: str) -> dict | None:
    """The manifest of a prepared (or cached) folder, local or at a URL; None when there is none:
    the manifest is written last, so a folder without one was never finished."""
    if "://" not in folder:
        path = Path(folder) / MANIFEST
        return json.loads(path.read_text()) if path.is_file() else None

    try:
        fs, root = storage.filesystem(folder.rstrip("/"))
        with fs.open_input_stream(f"{root}/{MANIFEST}") as f:
            return json.loads(f.read())
    except (OSError, ValueError, pa.ArrowException):  # not found, or not a filesystem pyarrow knows
        return None


def write_manifest(folder: str, manifest: dict) -> None:
    data = json.dumps(manifest, indent=1)
    if "://" not in folder:
        (Path(folder) / MANIFEST).write_text(data)
        return
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(folder.rstrip("/"))
    with fs.open_output_stream(f"{root}/{MANIFEST}") as f:
        f.write(data.encode())
