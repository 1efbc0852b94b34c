"""Streamed, interleaved training on a real local Ray cluster: each worker reads its own share of every dataset,
the realised shares are reported, and a worker killed mid-run resumes at the next unseen row of every stream
(the steps after the restart train exactly the rows, hence exactly the losses, of the run that was never
interrupted; a row trained twice or skipped would change them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rayft_core.train.outputs import read_metrics
from tests.helpers import checkpoints, resumes, run_config, train_through_a_worker_loss

pytestmark = pytest.mark.usefixtures("ray_cluster")

STEPS, EVERY = 12, 4


@pytest.fixture(scope="module")
def two_datasets(workdir: Path) -> list[dict]:
    """A long .jsonl and a short .json dataset, every row named by an id of its own."""
    folder = workdir / "streams"
    folder.mkdir()
    long_rows = [
        {"instruction": f"Say the id of row long-{i}.", "input": "", "output": f"long-{i}"} for i in range(300)
    ]
    (folder / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in long_rows))
    short_rows = [
        {"instruction": f"Say the id of row short-{i}.", "input": "", "output": f"short-{i}"} for i in range(14)
    ]
    (folder / "short.json").write_text(json.dumps(short_rows))
    return [
        {"path": str(folder / "long.jsonl"), "format": "alpaca"},
        {"path": str(folder / "short.json"), "format": "alpaca"},
    ]


def _run(tiny_model, workdir, datasets, name, **cluster):
    return run_config(
        tiny_model("llama"),
        datasets,
        workdir / "streamed",
        name,
        data={
            "train": datasets,
            "streaming": True,
            "mix": "interleave",
            "mix_probabilities": [0.6, 0.4],
            "mix_stopping": "first_exhausted",  # the short one (7 rows a worker) ends a pass every ~17 rows
        },
        train={"max_steps": STEPS, "micro_batch_size": 2, "logging_steps": 1},
        checkpoint={"save_steps": EVERY, "keep": 2},
        cluster={"num_workers": 2, **cluster},
    )


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, workdir, two_datasets) -> list[dict]:
    from rayft.train import train

    return read_metrics(train(_run(tiny_model, workdir, two_datasets, "uninterrupted")))


def test_an_interleaved_stream_reports_its_shares(uninterrupted):
    logged = [r for r in uninterrupted if "train/loss" in r]
    assert [r["step"] for r in logged] == list(range(1, STEPS + 1))
    last = logged[-1]
    shares = last["data/share/long.jsonl"], last["data/share/short.json"]
    assert sum(shares) == pytest.approx(1, abs=1e-3) and 0.4 < shares[0] < 0.8  # 48 rows drawn at 0.6 / 0.4
    assert all(r["perf/data_wait_s"] >= 0 for r in logged)


def test_a_worker_killed_mid_stream_resumes_at_the_next_unseen_row(tiny_model, workdir, two_datasets, uninterrupted):

    out = train_through_a_worker_loss(_run(tiny_model, workdir, two_datasets, "worker-loss", max_failures=1))
    events = resumes(out)
    assert len(events) == 1 and 0 < events[0]["step"] < STEPS, events
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for got, expected in zip(rows, uninterrupted):
        for key in ("train/loss", "data/share/long.jsonl"):
            assert got[key] == pytest.approx(expected[key], rel=1e-4), (key, got["step"])
    # every rank's checkpoint says where each of its streams stands
    positions = [json.loads(p.read_text()) for p in sorted(checkpoints(out)[-1].glob("stream_position_rank*.json"))]
    assert len(positions) == 2 and all(
        p["labels"] == ["long.jsonl", "short.json"] and p["num_workers"] == 2 for p in positions
    )


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_stream_resumes_inside_a_file_at_the_byte_its_chunk_starts(tmp_path, s3_bucket, where):
    """The reader continues at the chunk's byte offset: the bytes before it are never read again (here they are
    overwritten with garbage of the same length, which a reread would report as bad rows). Locally and in a
    bucket (an S3-compatible server on loopback)."""
    import pyarrow.fs as pafs

    from rayft.stream import CHUNK_ROWS, ChunkSource

    lines = [json.dumps({"text": f"row {i}"}) for i in range(3 * CHUNK_ROWS)]
    data = ("\n".join(lines) + "\n").encode()
    if where == "local":
        path = str(tmp_path / "rows.jsonl")
        fs, at = pafs.LocalFileSystem(), path
    else:
        path = f"s3://{s3_bucket}/stream/rows.jsonl"
        fs, at = pafs.FileSystem.from_uri(path)
    with fs.open_output_stream(at) as f:
        f.write(data)
    files = [path]
    first = list(ChunkSource(files, 1, 2, None, None, tokenized=False).blocks())
    assert [len(b) for b in first] == [CHUNK_ROWS, CHUNK_ROWS // 2]  # worker 1 of 2: every other row
    start = tuple(int(x) for x in first[1]["chunk"][0].as_py().split(","))
    assert start[2] > 0 and start[3] == 2 * CHUNK_ROWS + 2  # a byte offset, and line numbers from 1
    with fs.open_output_stream(at) as f:
        f.write(b"x" * start[2] + data[start[2] :])
    again = list(ChunkSource(files, 1, 2, start, None, tokenized=False).blocks())
    assert len(again) == 1 and again[0].equals(first[1])
    assert again[0]["row"].to_pylist() == list(range(2 * CHUNK_ROWS + 2, 3 * CHUNK_ROWS + 1, 2))


def test_preview_shows_a_streamed_interleave_in_the_order_it_is_drawn(tiny_model, workdir, two_datasets, tmp_path):
    from click.testing import CliRunner

    from rayft.cli import main

    run = _run(tiny_model, workdir, two_datasets, "preview")
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(run.model_dump(mode="json")))
    result = CliRunner().invoke(main, ["data", "preview", str(config), "-n", "12"])
    assert result.exit_code == 0, result.output
    sources = re.findall(r"─── row \d+ from (\S+) ", result.output)
    assert len(sources) == 12 and set(sources) == {"long.jsonl", "short.json"}, sources
    # one worker's draw: the rows of each dataset in file order, interleaved
    longs = [int(i) for i in re.findall(r"Say the id of row long-(\d+)\.", result.output)]
    assert longs == sorted(longs) and longs[0] == 0


def test_prepared_parquet_streams_in_shares_and_resumes_at_its_chunk(tmp_path):
    """A folder of tokenized Parquet (`rayft data prepare`'s) streams as it is: the workers' shares partition its
    rows across files, and a chunk read again from its start holds the same rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayft.stream import CHUNK_ROWS, ChunkSource

    files = []
    for k, n in enumerate((300, 700)):
        ids = [[k, i] for i in range(n)]
        path = tmp_path / f"part-{k}.parquet"
        pq.write_table(pa.table({"input_ids": ids, "labels": ids, "source": pa.array([0] * n, pa.int16())}), path)
        files.append(str(path))
    shares = [list(ChunkSource(files, rank, 2, None, None, tokenized=True).blocks()) for rank in (0, 1)]
    rows = [tuple(r) for blocks in shares for b in blocks for r in b["input_ids"].to_pylist()]
    assert sorted(rows) == sorted([(0, i) for i in range(300)] + [(1, i) for i in range(700)])
    assert all(len(b) == CHUNK_ROWS for b in shares[1][:-1])
    spanning = shares[1][0]  # worker 1's first chunk holds rows of both files
    assert {r[0] for r in spanning["input_ids"].to_pylist()} == {0, 1}
    start = tuple(int(x) for x in shares[1][1]["chunk"][0].as_py().split(","))
    again = list(ChunkSource(files, 1, 2, start, None, tokenized=True).blocks())
    assert [b.equals(a) for b, a in zip(again, shares[1][1:])] == [True] * (len(shares[1]) - 1)


def test_prepare_writes_the_interleaved_rows_and_a_run_streams_them(tiny_model, workdir, two_datasets, tmp_path):
    from click.testing import CliRunner

    from rayft.cli import main
    from rayft.train import train
    from rayft_core.data.mixing import interleave_counts

    run = _run(tiny_model, workdir, two_datasets, "prepare")
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(run.model_dump(mode="json")))
    prepared = tmp_path / "prepared"
    result = CliRunner().invoke(main, ["data", "prepare", str(config), "-o", str(prepared)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((prepared / "_rayft_data.json").read_text())
    expected = interleave_counts([300, 14], [0.6, 0.4], "first_exhausted", run.train.seed)
    assert [d["rows"] for d in manifest["datasets"]] == expected and manifest["rows"] == sum(expected)

    streamed = run_config(
        tiny_model("llama"),
        [{"path": str(prepared)}],
        workdir / "streamed",
        "from-prepared",
        data={"streaming": True},
        train={"max_steps": 3, "micro_batch_size": 2},
        cluster={"num_workers": 2},
    )
    assert [r["step"] for r in read_metrics(train(streamed)) if "train/loss" in r] == [1, 2, 3]


def test_a_worker_that_outruns_its_stream_gets_more_chunks_tokenized_ahead(tiny_model, workdir, tmp_path):
    """Rows taken as fast as they come: the worker waits for tokenized chunks, so the stream tokenizes further
    ahead each time (up to its maximum); every row still arrives once, in file order (no shuffle)."""
    from rayft.stream import MAX_PREFETCH_CHUNKS, PREFETCH_CHUNKS, WorkerStream

    path = tmp_path / "many.jsonl"
    rows = [{"instruction": f"Row {i}?", "input": "", "output": f"{i}"} for i in range(12 * 256)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = run_config(
        tiny_model("llama"),
        [{"path": str(path), "format": "alpaca"}],
        workdir / "streamed",
        "outrun",
        data={"streaming": True, "shuffle": False},
    )
    stream = WorkerStream(run, 0, 1, ["input_ids", "labels"])
    starts = [chunk[4] for chunk, _ in stream._open(0, None)]  # each row's chunk, by the dataset row it starts at
    assert starts == [256 * (i // 256) for i in range(len(rows))]
    assert PREFETCH_CHUNKS < stream.prefetch <= MAX_PREFETCH_CHUNKS


def test_each_pass_of_a_stream_shuffles_its_chunks_anew(tiny_model, workdir, tmp_path):
    from rayft.stream import WorkerStream

    path = tmp_path / "few.jsonl"
    path.write_text("".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(40)))
    run = run_config(
        tiny_model("llama"), [{"path": str(path), "format": "text"}], workdir / "streamed", "passes", stage="pt"
    )
    run.data.streaming, run.data.packing = True, False
    stream = WorkerStream(run, 0, 1, ["input_ids", "labels"])
    passes = [[tuple(ids) for batch in stream.epoch(e) for ids in batch["input_ids"]] for e in range(2)]
    assert sorted(passes[0]) == sorted(passes[1]) and len(set(passes[0])) == 40 and passes[0] != passes[1]
