"""The Ray Data pipeline of a run: read -> align -> template + tokenize -> pack -> mix -> split.

Every dataset of ``data.train`` (a dataset_info.json name, files named directly, a prepared
directory or a hub dataset) is read lazily by Ray Data, file by file: json, jsonl, csv, parquet
and txt, local or on any filesystem pyarrow reaches (s3://, gs://, ...). Rows stay JSON text until
they are aligned, so every row of every format reaches the same aligner with its file and row.
Align + tokenize + pack run in parallel map tasks that keep one tokenizer per process.

A row that cannot be used becomes an ``error`` entry (never dropped, never a crashed task): the
driver counts them by reason, shows the first few with file and row, and stops the run when they
exceed ``data.max_bad_fraction``. By default the tokenized set is then materialized once on the
object store, so every epoch and worker reads tokens, never text; with ``data.streaming`` it
streams to the workers instead and they check the rows as they come.
"""

from __future__ import annotations

import csv
import fnmatch
import functools
import hashlib
import io
import json
import logging
import os
import socket
import threading
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayft.cluster import tokenize_concurrency
from rayft_core.config import DatasetSpec, RunConfig
from rayft_core.data.formats import DataError, RowError, align_row, where
from rayft_core.data.packing import pack_examples
from rayft_core.data.registry import DatasetError, check_stage_fit, resolve_spec
from rayft_core.model.loader import load_tokenizer
from rayft_core.train.stages import STAGES

logger = logging.getLogger(__name__)
# A small dataset is one block, fewer than the tokenizing tasks allowed; Ray warns of that every run.
warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks for 'MapBatches", category=UserWarning)

READ_EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet", ".txt")
MANIFEST = "_rayft_data.json"  # beside prepared Parquet files; the "_" keeps Parquet readers from taking it as data
MAX_ERRORS_SHOWN = 5
ENCODE_BATCH = 256  # rows per map task batch: packing fills rows from one batch at a time
READ_BLOCK_ROWS = 2048  # raw rows per block after reading: the unit of parallel tokenizing


# ----------------------------------------------------------------------------- reports


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

    def table(self) -> str:
        lines = [f"{'dataset':<40} {'examples':>9} {'rows':>8} {'tokens':>11} {'bad':>6}"]
        for d in self.datasets:
            lines.append(f"{d.label[-40:]:<40} {d.examples:>9,} {d.rows:>8,} {d.tokens:>11,} {d.num_bad:>6,}")
        packed = f"packing on: {self.fill:.1%} of {self.max_seq_len}-token rows hold tokens" if self.packing else \
            f"packing off: rows average {self.tokens / max(self.rows, 1):.0f} tokens (max_seq_len {self.max_seq_len})"
        return "\n".join(lines + [packed])

    def bad_rows(self) -> str:
        counts = Counter()
        for d in self.datasets:
            counts.update(d.bad)
        shown = [s for d in self.datasets for s in d.shown][:MAX_ERRORS_SHOWN]
        by_reason = ", ".join(f"{n:,} {reason}" for reason, n in counts.most_common())
        more = self.num_bad - len(shown)
        return (f"{self.num_bad:,} unusable rows ({by_reason}):\n" + "\n".join(f"  - {s}" for s in shown)
                + (f"\n  ... and {more:,} more" if more > 0 else ""))


@dataclass
class RunData:
    """What the trainer gets: Ray datasets and their sizes (None when streamed)."""

    train: Any
    eval: Any | None
    train_rows: int | None
    eval_rows: int | None
    report: DataReport | None


# ----------------------------------------------------------------------------- files


def resolve_files(path: str, key: str) -> list[str]:
    """A file, a directory (its data files, recursively) or a glob, local or a URL -> sorted file paths."""
    if "://" in path and not path.startswith("file://"):
        files = _remote_files(path, key)
    else:
        local = Path(path.removeprefix("file://")).expanduser()
        if local.is_dir():
            files = sorted(str(p) for p in local.rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
        elif any(c in path for c in "*?["):
            files = sorted(str(p) for p in Path("/").glob(str(local.absolute()).lstrip("/")) if p.is_file())
        else:
            files = [str(local)] if local.is_file() else []
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
        fs, root = pafs.FileSystem.from_uri(base)
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
    return [f for f in files if fnmatch.fnmatch(f, url)] if pattern else files


def _rows_of_file(file: dict[str, Any]) -> list[dict[str, Any]]:
    """One file -> its rows as JSON text with file and row number, or an error entry per bad row.

    Rows stay JSON text until aligned: Arrow's type inference would turn a string "42" into an
    integer and reject files whose rows differ in shape.
    """
    path, data = file["path"], file["bytes"]

    def ok(i: int, value: Any) -> dict:
        return {"path": path, "row": i, "json": json.dumps(value, ensure_ascii=False, default=str), "error": None}

    def bad(i: int, reason: str, detail: str) -> dict:
        return {"path": path, "row": i, "json": None, "error": f"{path}: row {i}: {reason}: {detail}"}

    if path.endswith((".jsonl", ".txt")):
        out = []
        for i, raw in enumerate(data.split(b"\n"), 1):
            try:
                line = raw.decode("utf-8").rstrip("\r")
            except UnicodeDecodeError as e:
                out.append(bad(i, "undecodable bytes", f"not UTF-8 at byte {e.start}"))
                continue
            if not line.strip():
                continue
            if path.endswith(".txt"):
                out.append(ok(i, {"text": line}))
            else:  # parsed (and its JSON checked) where it is aligned, in parallel tasks
                out.append({"path": path, "row": i, "json": line, "error": None})
        return out
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return [ok(i, r) for i, r in enumerate(pq.read_table(io.BytesIO(data)).to_pylist())]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return [bad(0, "undecodable bytes", f"the file is not UTF-8 (byte {e.start})")]
    if path.endswith(".csv"):  # row numbers are data lines: the header is line 1
        return [ok(i, r) for i, r in enumerate(csv.DictReader(io.StringIO(text)), 2)]
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        return [bad(0, "invalid JSON", f"{e}; a .json file holds one array of rows, a .jsonl file one row per line")]
    if not isinstance(rows, list):
        return [bad(0, "wrong type", f"a .json dataset must be an array of rows, got {type(rows).__name__}")]
    return [ok(i, r) for i, r in enumerate(rows)]


def _hub_reachable(timeout: float = 3.0) -> bool:
    """False at once when offline is declared, else whether huggingface.co answers within `timeout`
    (DNS included, which a plain socket timeout would not bound)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") or os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", ""):
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def _read(spec: DatasetSpec, key: str) -> Any:
    """The raw rows of one dataset as a lazy Ray dataset of {path, row, json, error}."""
    import ray.data

    if spec.hf_hub_url:
        if not _hub_reachable():
            raise DatasetError(f"{key}: {spec.label} is on the Hugging Face hub, which cannot be reached from here "
                               "(offline, or HF_HUB_OFFLINE set); download its files where there is network and name "
                               "them with `path:`")
        try:
            import datasets
        except ImportError:
            raise DatasetError(f"{key}: reading hub datasets needs the datasets package: pip install 'rayft[hub]'") from None
        hub = datasets.load_dataset(spec.hf_hub_url, spec.subset, split=spec.split)
        return ray.data.from_huggingface(hub).map_batches(
            lambda b: {"path": [spec.label] * len(b), "row": list(range(len(b))),
                       "json": [json.dumps(r, ensure_ascii=False, default=str) for r in b.to_pylist()],
                       "error": [None] * len(b)}, batch_format="pyarrow")
    # A file is read by one task and gives one block; cut into blocks of READ_BLOCK_ROWS rows (streaming,
    # no shuffle), every CPU of the cluster aligns and tokenizes, even when the dataset is one big file.
    return ray.data.read_binary_files(resolve_files(spec.path, key), include_paths=True).flat_map(
        _rows_of_file).repartition(target_num_rows_per_block=READ_BLOCK_ROWS)


def is_prepared(spec: DatasetSpec) -> bool:
    return spec.format == "tokenized" or bool(spec.path and read_manifest(spec.path) is not None)


def read_manifest(folder: str) -> dict | None:
    """The manifest of a prepared (or cached) folder, local or at a URL; None when there is none:
    the manifest is written last, so a folder without one was never finished."""
    if "://" not in folder:
        path = Path(folder) / MANIFEST
        return json.loads(path.read_text()) if path.is_file() else None
    import pyarrow.fs as pafs

    try:
        fs, root = pafs.FileSystem.from_uri(folder.rstrip("/"))
        with fs.open_input_stream(f"{root}/{MANIFEST}") as f:
            return json.loads(f.read())
    except (OSError, ValueError, pa.ArrowException):  # not found, or not a filesystem pyarrow knows
        return None


def _remove_manifest(folder: str) -> None:
    if "://" not in folder:
        (Path(folder) / MANIFEST).unlink(missing_ok=True)
        return
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(folder.rstrip("/"))
    if fs.get_file_info(f"{root}/{MANIFEST}").type != pafs.FileType.NotFound:
        fs.delete_file(f"{root}/{MANIFEST}")


def _write_manifest(folder: str, manifest: dict) -> None:
    data = json.dumps(manifest, indent=1)
    if "://" not in folder:
        (Path(folder) / MANIFEST).write_text(data)
        return
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(folder.rstrip("/"))
    with fs.open_output_stream(f"{root}/{MANIFEST}") as f:
        f.write(data.encode())


# ----------------------------------------------------------------------------- encoding (in Ray tasks)


@functools.lru_cache(maxsize=4)
def _run_and_tokenizer(run_json: str) -> tuple[RunConfig, Any]:
    """Validated once per Ray worker process, not once per batch."""
    # Ray Data runs one tokenizing task per CPU already; the tokenizer's own threads would only contend.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    run = RunConfig.model_validate_json(run_json)
    return run, load_tokenizer(run.model)


def packing_on(run: RunConfig) -> bool:
    return run.data.packing if run.data.packing is not None else run.stage.name == "pt"


def _encode(batch: pa.Table, run_json: str, spec_json: str, source: int) -> pa.Table:
    """Align, tokenize and (when on) pack a batch of raw rows; bad rows become error entries."""
    run, tokenizer = _run_and_tokenizer(run_json)
    spec = DatasetSpec.model_validate_json(spec_json)
    stage = STAGES[run.stage.name]
    aligned, errors = [], []
    for raw in batch.to_pylist():
        if raw["error"] is not None:
            errors.append(raw["error"])
            continue
        try:
            value = json.loads(raw["json"])
        except json.JSONDecodeError as e:
            errors.append(f"{raw['path']}: row {raw['row']}: invalid JSON: {e}")
            continue
        if not isinstance(value, dict):
            errors.append(f"{raw['path']}: row {raw['row']}: wrong type: a row must be an object, got {type(value).__name__}")
            continue
        row = {**value, "path": raw["path"], "__row__": raw["row"]}
        try:
            aligned.append({"path": raw["path"], "__row__": raw["row"], **align_row(row, spec, run.stage.name)})
        except RowError as e:
            errors.append(str(e))
    enc = _encode_rows(stage, aligned, tokenizer, run, errors)
    ids, labels = enc["input_ids"], enc["labels"]
    if packing_on(run) and ids:
        packed = pack_examples(ids, labels, run.data.max_seq_len)
        ids, labels, positions, counts = packed["input_ids"], packed["labels"], packed["position_ids"], packed["num_examples"]
    else:
        positions, counts = None, [1] * len(ids)
    n_good, n_bad = len(ids), len(errors)
    columns = {
        "input_ids": pa.array(ids + [[]] * n_bad, type=pa.list_(pa.int32())),
        "labels": pa.array(labels + [[]] * n_bad, type=pa.list_(pa.int32())),
        "num_tokens": pa.array([len(x) for x in ids] + [0] * n_bad, type=pa.int32()),
        "num_examples": pa.array(counts + [0] * n_bad, type=pa.int32()),
        "source": pa.array([source] * (n_good + n_bad), type=pa.int16()),
        "error": pa.array([None] * n_good + errors, type=pa.string()),
    }
    if packing_on(run):
        columns["position_ids"] = pa.array((positions or []) + [[]] * n_bad, type=pa.list_(pa.int32()))
    return pa.table(columns)


def _encode_rows(stage: Any, rows: list[dict], tokenizer: Any, run: RunConfig, errors: list[str]) -> dict[str, list]:
    """The stage's encoding of a batch; rows whose tokens carry no loss after truncation are errors.

    When the batch fails as a whole (a template that cannot render one row), each row is encoded
    alone so the error names the row that caused it.
    """
    if not rows:  # Ray Data may hand over an empty block; tokenizers reject empty batches
        return {"input_ids": [], "labels": []}
    try:
        enc = stage.encode_rows(rows, tokenizer, run)
    except DataError:
        enc = {"input_ids": [], "labels": [], "row_of_example": []}
        for i, row in enumerate(rows):
            try:
                one = stage.encode_rows([row], tokenizer, run)
            except DataError as e:
                errors.append(f"{where(row)}: template: {e}")
                continue
            enc["input_ids"] += one["input_ids"]
            enc["labels"] += one["labels"]
            enc["row_of_example"] += [i] * len(one["input_ids"])
    keep = [k for k, y in enumerate(enc["labels"]) if any(t != -100 for t in y[1:])]
    for k in sorted(set(range(len(enc["labels"]))) - set(keep)):
        errors.append(f"{where(rows[enc['row_of_example'][k]])}: nothing to learn: no trainable tokens are left after "
                      f"truncation to max_seq_len {run.data.max_seq_len}")
    return {"input_ids": [enc["input_ids"][k] for k in keep], "labels": [enc["labels"][k] for k in keep]}


def _reason(error: str) -> str:
    """'file: row N: reason: detail' -> reason."""
    parts = error.split(": ")
    return parts[2] if len(parts) > 3 and parts[1].startswith("row ") else parts[1] if len(parts) > 2 else "unreadable"


def _drop_errors(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_null(batch["error"])).drop_columns(["error"])


# ----------------------------------------------------------------------------- the pipeline


def _tokenized(run: RunConfig, specs: list[DatasetSpec], section: str) -> tuple[Any, list[DatasetSpec]]:
    """The lazy union of the tokenized datasets of one section (data.train or data.eval), and their resolved specs."""
    import ray.data

    run_json = run.model_dump_json()
    parts, resolved = [], []
    for i, spec in enumerate(specs):
        key = f"{section}[{i}]"
        spec = resolve_spec(spec, run.data.dataset_dir, key)
        resolved.append(spec)
        if is_prepared(spec):
            parts.append(_read_prepared(spec, run, key, source=i))
            continue
        if spec.format is None and spec.path and spec.path.endswith(".txt"):
            spec = spec.model_copy(update={"format": "text"})
            resolved[-1] = spec
        check_stage_fit(spec, run.stage.name, key)
        ds = _read(spec, key)
        if spec.num_samples:
            ds = ds.limit(spec.num_samples)
        parts.append(ds.map_batches(_encode, batch_format="pyarrow", batch_size=ENCODE_BATCH, zero_copy_batch=True,
                                    compute=ray.data.TaskPoolStrategy(size=tokenize_concurrency()),
                                    fn_kwargs={"run_json": run_json, "spec_json": spec.model_dump_json(), "source": i}))
    return (parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]), resolved


def _read_prepared(spec: DatasetSpec, run: RunConfig, key: str, source: int) -> Any:
    """A directory written by `rayft data prepare`: tokenized rows, checked against this run."""
    import ray.data

    manifest = read_manifest(spec.path)
    if manifest is None:
        raise DatasetError(f"{key}: {spec.path} holds no {MANIFEST}: it was not written by `rayft data prepare`, "
                           "or the write did not finish")
    if manifest:
        if manifest["max_seq_len"] > run.data.max_seq_len:
            raise DatasetError(f"{key}: {spec.path} was prepared with max_seq_len {manifest['max_seq_len']}, longer "
                               f"than this run's {run.data.max_seq_len}; prepare it again")
        if manifest["stage"] != run.stage.name:
            raise DatasetError(f"{key}: {spec.path} was prepared for stage {manifest['stage']}, not {run.stage.name}")
        if manifest["packing"] != packing_on(run):
            raise DatasetError(f"{key}: {spec.path} was prepared with packing {'on' if manifest['packing'] else 'off'}; "
                               f"set data.packing: {str(manifest['packing']).lower()} or prepare it again")
    ds = ray.data.read_parquet(spec.path, file_extensions=["parquet"])
    return ds.map_batches(lambda b: b.set_column(b.schema.get_field_index("source"), "source",
                                                 pa.array([source] * len(b), type=pa.int16())),
                          batch_format="pyarrow").map_batches(
        lambda b: b.append_column("error", pa.array([None] * len(b), type=pa.string())), batch_format="pyarrow")


def _report(ds: Any, labels: list[str], run: RunConfig) -> DataReport:
    """One pass over the small columns of a materialized set: counts per dataset and the bad rows."""
    report = DataReport([DatasetReport(label) for label in labels], run.data.max_seq_len, packing_on(run))
    for b in ds.select_columns(["source", "num_tokens", "num_examples", "error"]).iter_batches(batch_format="pyarrow",
                                                                                           batch_size=None):
        sources = b["source"].to_numpy()
        errors = b["error"].to_pylist()
        tokens = b["num_tokens"].to_numpy()
        examples = b["num_examples"].to_numpy()
        for s in np.unique(sources):
            d = report.datasets[s]
            sel = sources == s
            good = sel & pc.is_null(b["error"]).to_numpy(zero_copy_only=False)
            d.rows += int(good.sum())
            d.tokens += int(tokens[good].sum())
            d.examples += int(examples[good].sum())
        for s, e in zip(sources, errors):
            if e is not None:
                d = report.datasets[s]
                reason = _reason(e)
                d.bad[reason] = d.bad.get(reason, 0) + 1
                if len(d.shown) < MAX_ERRORS_SHOWN:
                    d.shown.append(e)
        if len(report.lengths) < 100_000:
            report.lengths += tokens[pc.is_null(b["error"]).to_numpy(zero_copy_only=False)].tolist()
    return report


def check_bad_rows(report: DataReport, max_fraction: float, section: str) -> None:
    total = sum(d.examples for d in report.datasets) + report.num_bad
    if report.num_bad == 0:
        if total == 0:
            raise DatasetError(f"{section}: the datasets hold no rows")
        return
    if report.rows == 0 or report.num_bad / max(total, 1) > max_fraction:
        limit = "no usable rows remain" if report.rows == 0 else \
            f"that is {report.num_bad / total:.2%} of the rows; data.max_bad_fraction allows {max_fraction:.2%}"
        raise DataError(f"{section}: {report.bad_rows()}\n{limit}; fix or remove them")
    logger.warning("%s: skipping %s", section, report.bad_rows())


def interleave_counts(sizes: list[int], probabilities: list[float] | None, stopping: str, seed: int) -> list[int]:
    """How many rows each dataset contributes when drawing dataset i with probability p_i (seeded).

    first_exhausted stops at the first draw from a dataset with nothing left; all_exhausted goes
    on until every dataset has been drawn through once (the smaller ones repeat), as
    `datasets.interleave_datasets` does.
    """
    k = len(sizes)
    p = np.asarray(probabilities if probabilities else [1 / k] * k, dtype=np.float64)
    sizes_a = np.asarray(sizes)
    rng = np.random.default_rng(seed)
    taken = np.zeros(k, dtype=np.int64)
    live = p > 0
    while True:
        draws = rng.choice(k, size=65_536, p=p)
        counts = np.cumsum(np.eye(k, dtype=np.int64)[draws], axis=0) + taken
        if stopping == "first_exhausted":
            over = np.nonzero((counts > sizes_a).any(axis=1))[0]
            if len(over):
                return (counts[over[0] - 1] if over[0] > 0 else taken).tolist()
        else:
            done = np.nonzero(((counts >= sizes_a) | ~live).all(axis=1))[0]
            if len(done):
                return counts[done[0]].tolist()
        taken = counts[-1]


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
    logger.info("interleaved %s rows: %s", f"{sum(counts):,}", ", ".join(
        f"{d.label} {n:,} of {d.rows:,}" for d, n in zip(report.datasets, counts)))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def cache_key(run: RunConfig, specs: list[DatasetSpec]) -> str:
    """Everything the tokenized rows depend on: the data (file sizes and times), the tokenizer, the template, the stage."""
    files = []
    for i, spec in enumerate(specs):
        if spec.path and "://" not in spec.path:
            for f in resolve_files(spec.path, f"data.train[{i}]"):
                st = os.stat(f)
                files.append((f, st.st_size, st.st_mtime_ns))
        else:  # remote files and hub datasets: named, not fingerprinted
            files.append((spec.label,))
    tok_dir = Path(run.model.name_or_path)
    tok_files = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(tok_dir.glob("*token*"))] \
        if tok_dir.is_dir() else []
    stage = run.stage.model_dump()
    key = {"v": 1, "specs": [s.model_dump() for s in specs], "files": files, "tokenizer": [run.model.name_or_path, tok_files],
           "template": [run.model.template, run.model.chat_template, run.model.add_special_tokens], "stage": stage,
           "max_seq_len": run.data.max_seq_len, "packing": packing_on(run)}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def write_prepared(ds: Any, out: str, run: RunConfig, report: DataReport) -> None:
    """Parquet (input_ids, labels, position_ids when packed, ...) plus a manifest written last:
    a directory without its manifest is an unfinished write and is never read."""
    _remove_manifest(out)  # first: an interrupted rewrite must not look finished
    ds.write_parquet(out, mode="overwrite")
    manifest = {"stage": run.stage.name, "max_seq_len": run.data.max_seq_len, "packing": packing_on(run),
                "tokenizer": run.model.name_or_path, "template": run.model.template, "rows": report.rows,
                "tokens": report.tokens, "datasets": [asdict(d) for d in report.datasets]}
    _write_manifest(out, manifest)


def _cached(run: RunConfig, specs: list[DatasetSpec]) -> tuple[Any, DataReport] | None:
    import ray.data

    out = f"{run.data.cache_dir.rstrip('/')}/{cache_key(run, specs)}"
    manifest = read_manifest(out)
    if manifest is None:
        return None
    report = DataReport([DatasetReport(**d) for d in manifest["datasets"]], run.data.max_seq_len, packing_on(run))
    logger.info("tokenized data from the cache: %s", out)
    return ray.data.read_parquet(out, file_extensions=["parquet"]), report


def tokenize_section(run: RunConfig, section: str) -> tuple[Any, DataReport]:
    """A section's datasets tokenized and materialized (or read from the cache), bad rows counted and removed."""
    specs = run.data.train if section == "data.train" else run.data.eval
    resolved = [resolve_spec(s, run.data.dataset_dir, f"{section}[{i}]") for i, s in enumerate(specs)]
    if run.data.cache_dir and (hit := _cached(run, resolved)) is not None:
        return hit
    ds, resolved = _tokenized(run, specs, section)
    ds = ds.materialize()
    report = _report(ds, [s.dataset or r.label for s, r in zip(specs, resolved)], run)
    check_bad_rows(report, run.data.max_bad_fraction, section)
    if report.num_bad:
        ds = ds.map_batches(_drop_errors, batch_format="pyarrow").materialize()
    else:
        ds = ds.drop_columns(["error"])
    if run.data.cache_dir and not any(is_prepared(s) for s in resolved):
        out = f"{run.data.cache_dir.rstrip('/')}/{cache_key(run, resolved)}"
        write_prepared(ds, out, run, report)
        logger.info("tokenized data cached in %s", out)
    return ds, report


def preview(run: RunConfig, n: int) -> tuple[list[dict], DataReport]:
    """The first n training rows (as trained, before shuffling) and the report, bad rows included."""
    ds, resolved = _tokenized(run, run.data.train, "data.train")
    ds = ds.materialize()
    report = _report(ds, [s.dataset or r.label for s, r in zip(run.data.train, resolved)], run)
    rows = ds.map_batches(_drop_errors, batch_format="pyarrow").take(n) if report.rows else []
    return [{k: list(v) if v is not None and k.endswith(("ids", "labels")) else v for k, v in r.items()} for r in rows], report


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
    return RunData(train=train, eval=evaluation, train_rows=train.count(),
                   eval_rows=evaluation.count() if evaluation is not None else None, report=report)


def _streamed(run: RunConfig) -> RunData:
    """Lazy datasets: rows flow from the files through the tokenizer to the workers, never all held at once."""
    if run.data.mix == "interleave" and len(run.data.train) > 1:
        raise DatasetError("data.mix: interleaving needs each dataset's size, which a stream does not know in advance; "
                           "use mix: concat with streaming, or turn streaming off")
    train, _ = _tokenized(run, run.data.train, "data.train")
    evaluation = _tokenized(run, run.data.eval, "data.eval")[0] if run.data.eval else None
    return RunData(train=train.drop_columns(["source"]), eval=evaluation.drop_columns(["source"]) if evaluation else None,
                   train_rows=None, eval_rows=None, report=None)


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
            raise DataError(f"{self.bad} of {self.seen} streamed rows cannot be used (data.max_bad_fraction "
                            f"{self.max_fraction:.2%}):\n" + "\n".join(f"  - {s}" for s in self.shown))
        for i in bad:
            batch["input_ids"][i], batch["labels"][i] = np.array([self.pad]), np.array([-100])
            if "position_ids" in batch:
                batch["position_ids"][i] = np.array([0])
        return batch
