"""A streamed run's training rows: each worker reads its own share of every dataset, in order, so a checkpoint can
say where each stream stands and a restarted worker continues at the next unseen row.

A dataset's rows are counted across its files in order; row e belongs to worker e % num_workers, which cuts its
rows into chunks of CHUNK_ROWS. For each dataset, a worker:

    reads its chunks (ChunkSource: from a chunk start on, files before it skipped, a .jsonl/.txt file entered at
    the byte where the chunk starts; skipping the other workers' rows costs a line split), and hands each chunk
    to a Ray task that aligns, tokenizes and packs it whole, then shuffles its rows (seeded by the chunk), on
    the worker's own node when it keeps a CPU beside the training workers, else on any node's (_placement); a few
    tasks run ahead of the rows being trained (more when the worker has had
    to wait), and their results come back in order to rayft_core.data.interleave, which draws the rows.

A chunk is tokenized and packed as a whole, the first time and after a restart, so its rows come out the same and
those already trained are skipped by count. Why Ray tasks and not a Ray Data pipeline here: Ray Data's read
operator reshapes blocks (it merges a read task's output up to 128 MB, or splits it for parallelism), so a chunk
would not reach the tokenizer whole and the same way after a restart, and its executor tokenizes as far ahead as
the object store allows, taking CPUs from training. Materialized (non-streamed) data goes through Ray Data
(rayft.data).
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayft.data import ENCODE_BATCH, ResolvedDataset, as_source, resolve_datasets, run_and_tokenizer, spec_of
from rayft.hub import hub_files
from rayft.sources import LINE_FILES, line_rows, resolve_files, rows_of_file
from rayft_core import storage
from rayft_core.config import RunConfig
from rayft_core.data.encode import encode_batch
from rayft_core.data.interleave import Interleaver
from rayft_core.data.registry import DatasetError

logger = logging.getLogger(__name__)
CHUNK_ROWS = ENCODE_BATCH  # rows per chunk: the unit of tokenizing, packing, shuffling and resuming
# Chunks each dataset's stream tokenizes ahead of the one being trained: a chunk is many steps' rows at usual batch
# sizes, so two keep the worker fed while a task runs, without tokenizing far ahead on CPUs training needs. Where
# the worker still waits for a chunk (steps faster than tokenizing), one more goes ahead each time, up to the max.
PREFETCH_CHUNKS, MAX_PREFETCH_CHUNKS = 2, 8
STARVED_S = 0.01  # a wait for a tokenized chunk longer than this counts as the worker outrunning its stream
# A chunk's start: (file index, entry in that file, byte offset (-1: the file is parsed whole), line, entry in the dataset)
Start = tuple[int, int, int, int, int]
FIRST: Start = (0, 0, 0, 1, 0)


READ_BYTES = 8 * 2**20  # a line file is read this much at a time: a file of any size streams in bounded memory


def _read_bytes(path: str) -> bytes:
    fs, local = storage.filesystem(path)
    with fs.open_input_file(local) as f:
        return f.read()


def _lines(path: str, offset: int) -> Iterator[bytes]:
    """The lines of a file from byte ``offset`` (each without its "\\n"), read a block at a time."""
    fs, local = storage.filesystem(path)
    with fs.open_input_file(local) as f:
        f.seek(offset)
        rest = b""
        while block := f.read(READ_BYTES):
            *lines, rest = (rest + block).split(b"\n")
            yield from lines
        yield rest


class ChunkSource:
    """One worker's chunks of one dataset, from ``start`` on, as tables of raw rows.

    Rows: {path, row, json, error, chunk}, ``chunk`` the chunk's start as text; for a folder written by
    `rayft data prepare` (``tokenized``), its Parquet rows as they are, and chunk."""

    def __init__(
        self, files: list[str], rank: int, world: int, start: Start | None, limit: int | None, tokenized: bool
    ):
        self.files, self.rank, self.world, self.limit, self.tokenized = files, rank, world, limit, tokenized
        self.start = start or FIRST

    def blocks(self) -> Iterator[pa.Table]:
        """This worker's chunks in order, one block each."""
        pieces: list[Any] = []  # the chunk in progress: raw rows, or (table, index) of tokenized rows
        key = ""
        for start, piece in self._tokenized_rows() if self.tokenized else self._raw_rows():
            entry = start[4]
            if entry % self.world != self.rank:
                continue
            if (entry // self.world) % CHUNK_ROWS == 0 or not pieces:
                if pieces:
                    yield self._block(pieces, key)
                pieces, key = [], ",".join(map(str, start))
            pieces.append(piece)
        if pieces:
            yield self._block(pieces, key)

    def _block(self, pieces: list[Any], key: str) -> pa.Table:
        if self.tokenized:  # runs of rows from one table, taken together
            runs = [list(run) for _, run in itertools.groupby(pieces, key=lambda p: id(p[0]))]
            table = pa.concat_tables([run[0][0].take([j for _, j in run]) for run in runs])
        else:
            table = pa.Table.from_pylist(pieces)
        return table.append_column("chunk", pa.array([key] * len(table), pa.string()))

    def _raw_rows(self) -> Iterator[tuple[Start, dict[str, Any]]]:
        """(where the row starts, the row) for every row of the dataset from ``start`` on, up to ``limit``."""
        f0, in_file0, offset0, line0, entry = self.start
        for f in range(f0, len(self.files)):
            path, first = self.files[f], f == f0
            in_file = in_file0 if first else 0
            if path.endswith(LINE_FILES):
                offset = offset0 if first else 0
                rows = line_rows(path, _lines(path, offset), line0 if first else 1, offset)
                located = ((in_file + j, at, row) for j, (at, row) in enumerate(rows))
            else:
                whole = rows_of_file({"path": path, "bytes": _read_bytes(path)})
                located = ((j, -1, whole[j]) for j in range(in_file, len(whole)))
            for j, at, row in located:
                if self.limit is not None and entry >= self.limit:
                    return
                yield (f, j, at, row["row"], entry), row
                entry += 1

    def _tokenized_rows(self) -> Iterator[tuple[Start, tuple[pa.Table, int]]]:
        """(where the row is, (its table, its index)) for every prepared row from ``start`` on, up to ``limit``."""
        f0, in_file0, _, _, entry = self.start
        for f in range(f0, len(self.files)):
            fs, local = storage.filesystem(self.files[f])
            table = pq.read_table(local, filesystem=fs)
            for j in range(in_file0 if f == f0 else 0, len(table)):
                if self.limit is not None and entry >= self.limit:
                    return
                yield (f, j, -1, j, entry), (table, j)
                entry += 1


def _encode_chunk(raw: pa.Table, run_json: str, spec_json: str, source: int, epoch: int) -> tuple[pa.Table, str]:
    """A Ray task: one chunk aligned, tokenized and packed as a whole, then (data.shuffle) its rows shuffled by a
    seed of its own for this pass (``epoch``); and the node it ran on."""
    import ray

    run, tokenizer = run_and_tokenizer(run_json)
    key = raw["chunk"][0].as_py()
    encoded = _shuffled(encode_batch(raw, run, tokenizer, spec_of(spec_json), source), key, run, epoch)
    return encoded.append_column("chunk", pa.array([key] * len(encoded))), ray.get_runtime_context().get_node_id()


def _placement(beside: float | None) -> Any:
    """Where a worker's chunk tasks run. On its own node when the node has a CPU beyond the ``beside`` its training
    workers take (rayft keeps one there when cpus_per_worker is auto): every node that trains then tokenizes its own
    workers' rows, and no raw chunk crosses nodes. Affinity rather than Ray's SPREAD, which ran every task of
    tests/cluster/test_multinode.py on one node in 1 of 3 runs while the other had 2 CPUs free. Soft: a dead node's
    tasks run elsewhere. Otherwise (no CPU to spare there, or outside a training worker): SPREAD."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    cpus = next((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["NodeID"] == here), 0.0)
    if beside is not None and cpus - beside >= 1:
        return NodeAffinitySchedulingStrategy(here, soft=True)
    return "SPREAD"


def _shuffled(table: pa.Table, key: str, run: RunConfig, epoch: int) -> pa.Table:
    if not run.data.shuffle or len(table) < 2:
        return table
    rng = np.random.default_rng([run.train.seed, epoch, zlib.crc32(key.encode())])
    return table.take(rng.permutation(len(table)))


class WorkerStream:
    """This worker's training rows of a streamed run: its share of every dataset, drawn by data.mix, resumable
    (``state``/``restore``), served as micro-batches of ``columns`` one pass (epoch) at a time."""

    def __init__(self, run: RunConfig, rank: int, world: int, columns: list[str], beside: float | None = None):
        """``beside``: the CPUs the training workers on this worker's node take (see _placement)."""
        import ray

        self.run, self.rank, self.world, self.columns = run, rank, world, columns
        self.encode = ray.remote(_encode_chunk).options(num_cpus=1, scheduling_strategy=_placement(beside))
        self.datasets = resolve_datasets(run, "data.train")
        self.files = [_files(d) for d in self.datasets]
        several = len(self.datasets) > 1
        mode = run.data.mix_stopping if several and run.data.mix == "interleave" else "concat"
        self.labels = _short_names(self.datasets)
        self.tokenized_on: dict[str, int] = {}  # chunks of this worker's rows tokenized on each Ray node
        self.prefetch = PREFETCH_CHUNKS
        # one generator per worker: the workers' shares are drawn apart, each reproducibly
        self.interleaver = Interleaver(self._open, self.labels, run.data.mix_probabilities, mode, run.train.seed + rank)

    def _open(self, i: int, chunk: tuple[int, ...] | None) -> Iterator[tuple[Any, dict[str, Any]]]:
        """Dataset i's rows from the start of ``chunk`` (None: its start), as (chunk key, row)."""
        d = self.datasets[i]
        source = ChunkSource(
            self.files[i], self.rank, self.world, chunk, d.spec.num_samples, tokenized=d.manifest is not None
        )
        tables = self._encoded(source.blocks(), i) if d.manifest is None else (as_source(t, i) for t in source.blocks())
        columns = [*self.columns, "error"]
        for table in tables:
            key = tuple(map(int, table["chunk"][0].as_py().split(",")))
            values = {c: table[c].to_numpy(zero_copy_only=False) for c in columns}
            for j in range(len(table)):  # token lists are read-only views of the table: copied
                yield key, {c: v.copy() if isinstance(v := values[c][j], np.ndarray) else v for c in columns}

    def _encoded(self, chunks: Iterator[pa.Table], i: int) -> Iterator[pa.Table]:
        """Each chunk tokenized by a Ray task, ``self.prefetch`` of them ahead of the one being trained, in order."""
        import ray

        # the pass in progress: a chunk's rows come in another order each pass, the same after a restart
        args = (self.run.model_dump_json(), self.datasets[i].spec.model_dump_json(), i, self.interleaver.passes)
        pending: collections.deque = collections.deque()
        first = True  # a stream's first chunk is always waited for
        for raw in itertools.chain(chunks, [None]):
            if raw is not None:
                pending.append(self.encode.remote(raw, *args))
            while pending and (raw is None or len(pending) > self.prefetch):
                started = time.perf_counter()
                table, node = ray.get(pending.popleft())
                waited = time.perf_counter() - started
                if not first and waited > STARVED_S and self.prefetch < MAX_PREFETCH_CHUNKS:
                    self.prefetch += 1
                    logger.info("waited %.2f s for a tokenized chunk: now %d chunks ahead", waited, self.prefetch)
                first = False
                self.tokenized_on[node] = self.tokenized_on.get(node, 0) + 1
                yield table

    def epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        """One pass of the stream as micro-batches (the last may be short); the next call continues with the next."""
        size = self.run.train.micro_batch_size
        rows: list[dict[str, Any]] = []
        for _, row in self.interleaver.rows():
            rows.append(row)
            if len(rows) == size:
                yield self._batch(rows)
                rows = []
        if rows:
            yield self._batch(rows)

    def _batch(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {c: [r[c] for r in rows] for c in (*self.columns, "error")}

    def drawn(self) -> list[int]:
        return self.interleaver.drawn

    def state(self) -> dict[str, Any]:
        hub = [d.spec.hf_hub_url for d in self.datasets]
        return {"num_workers": self.world, "hub_commits": hub, **self.interleaver.state()}

    def restore(self, state: dict[str, Any]) -> None:
        if state["num_workers"] != self.world:
            raise DatasetError(
                f"the checkpoint's streams were split among {state['num_workers']} workers, this run has "
                f"{self.world}: a streamed run resumes with the num_workers it was checkpointed with"
            )
        for was, d in zip(state.get("hub_commits", []), self.datasets):
            if was and was != d.spec.hf_hub_url:  # its files moved: the checkpoint's position means other rows now
                raise DatasetError(
                    f"{d.key}: the hub dataset was read at {was} when the checkpoint was taken and is at "
                    f"{d.spec.hf_hub_url} now; resume from that commit: hf_hub_url: {was}"
                )
        self.interleaver.restore(state)


def _short_names(datasets: list[ResolvedDataset]) -> list[str]:
    """What the metrics call each dataset (data/share/<name>): its dataset_info.json name, else its file or folder
    name, numbered where two would share one."""
    names = [d.label.rstrip("/").rsplit("/", 1)[-1] for d in datasets]
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _files(d: ResolvedDataset) -> list[str]:
    """A dataset's files in order (a hub dataset's at the commit the driver pinned: rayft.hub.pin_hub_datasets)."""
    if d.spec.hf_hub_url:
        return hub_files(d.spec, d.key)
    files = resolve_files(d.spec.path, d.key)
    return [f for f in files if f.endswith(".parquet")] if d.manifest is not None else files


def first_rows(run: RunConfig, n: int) -> list[dict[str, Any]]:
    """The first n usable rows of a streamed run as one worker would draw them, each with its dataset's name."""
    from rayft_core.train.stages import STAGES

    columns = [*STAGES[run.stage.name].columns, *(["position_ids"] if run.packing else [])]
    stream = WorkerStream(
        run.model_copy(update={"data": run.data.model_copy(update={"shuffle": False})}), 0, 1, columns
    )
    rows = []
    try:
        for source, row in stream.interleaver.rows():
            if row.pop("error") is None:
                rows.append({**row, "dataset": stream.labels[source]})
            if len(rows) == n:
                break
    finally:
        stream.interleaver.close()
    return rows
