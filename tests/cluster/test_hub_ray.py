"""Hub datasets (hf_hub_url) read as files, streamed or not, from a stand-in for the hub on loopback
(tests/hub_server.py: the endpoints huggingface_hub's filesystem calls), since the hub cannot be reached here."""

from __future__ import annotations

import json

import pytest

from rayft_core.data.registry import DatasetError
from tests.helpers import run_config
from tests.hub_server import REVISION, HubServer

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Two dataset repositories: rayft/chat (split named in its file names, 2 train files and a test file) and
    rayft/subsets (subsets and splits named by its card's configs)."""
    root = tmp_path_factory.mktemp("hub")
    alpaca = [{"instruction": f"What is {i} + 1?", "input": "", "output": f"{i + 1}"} for i in range(700)]
    _jsonl(root / "rayft/chat/data/train-00000-of-00002.jsonl", alpaca[:400])
    _jsonl(root / "rayft/chat/data/train-00001-of-00002.jsonl", alpaca[400:600])
    _jsonl(root / "rayft/chat/data/test-00000-of-00001.jsonl", alpaca[600:])
    _jsonl(root / "rayft/subsets/small/part-0.jsonl", alpaca[:30])
    _jsonl(root / "rayft/subsets/big/part-0.jsonl", alpaca[:90])
    _jsonl(root / "rayft/subsets/big/held-out.jsonl", alpaca[90:100])
    (root / "rayft/subsets/README.md").write_text(
        "---\nconfigs:\n- config_name: small\n  data_files: small/*.jsonl\n  default: true\n- config_name: big\n"
        "  data_files:\n  - split: train\n    path: big/part-*.jsonl\n  - split: test\n    path: big/held-out.jsonl\n"
        "---\n# subsets\n"
    )
    server = HubServer(root)
    yield server
    server.close()


@pytest.fixture
def online(hub, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    return hub


def test_a_hub_datasets_files_by_subset_and_split_at_one_commit(online):
    from rayft.hub import hub_files
    from rayft_core.config import DatasetSpec

    def files(**spec):
        return [f.rsplit("/", 2)[-2:] for f in hub_files(DatasetSpec(**spec), "data.train[0]")]

    chat = hub_files(DatasetSpec(hf_hub_url="rayft/chat"), "k")
    assert chat == [f"hf://datasets/rayft/chat@{REVISION}/data/train-0000{i}-of-00002.jsonl" for i in (0, 1)]
    assert files(hf_hub_url="rayft/chat", split="test") == [["data", "test-00000-of-00001.jsonl"]]
    assert files(hf_hub_url="rayft/subsets") == [["small", "part-0.jsonl"]]  # the card's default config
    assert files(hf_hub_url="rayft/subsets", subset="big", split="test") == [["big", "held-out.jsonl"]]
    with pytest.raises(DatasetError, match="no subset 'huge'; its subsets: small, big"):
        files(hf_hub_url="rayft/subsets", subset="huge")
    with pytest.raises(DatasetError, match="no split 'validation' here; its splits: train, test"):
        files(hf_hub_url="rayft/subsets", subset="big", split="validation")
    with pytest.raises(DatasetError, match="no dataset 'rayft/none' on the hub"):
        files(hf_hub_url="rayft/none")


def test_a_hub_dataset_trains_streamed_and_not(online, tiny_model, workdir, caplog):
    """Not streamed: Ray Data's tasks read the files through huggingface_hub's filesystem (and the tokenized rows
    are cached under the dataset's commit). Streamed: a worker reads its share a range of bytes at a time, and a
    checkpoint taken at one commit refuses another."""
    import logging

    from rayft.data import build_run_data
    from rayft.hub import pin_hub_datasets
    from rayft.stream import WorkerStream

    run = run_config(tiny_model("llama"), [{"hf_hub_url": "rayft/chat"}], workdir / "hub", "hub")
    run.data.cache_dir = str(workdir / "hub-cache")
    data = build_run_data(run)
    assert data.train_rows == 600 and data.report.datasets[0].label == "hf://rayft/chat"
    with caplog.at_level(logging.INFO, logger="rayft"):
        assert build_run_data(run).train_rows == 600 and "from the cache" in caplog.text
    run.data.cache_dir = None

    run.data.streaming, run.data.shuffle = True, False
    pinned = pin_hub_datasets(run)
    assert pinned.data.train[0].hf_hub_url == f"rayft/chat@{REVISION}"
    stream = WorkerStream(pinned, 1, 2, ["input_ids", "labels"])  # worker 1 of 2: every other row
    answers = [row["input_ids"] for _, row in stream._open(0, None)]
    assert len(answers) == 300
    state = stream.state()
    with pytest.raises(DatasetError, match="read at rayft/chat@f{40} when the checkpoint was taken"):
        stream.restore({**state, "hub_commits": ["rayft/chat@" + "f" * 40]})


def test_a_hub_stream_resumes_at_the_byte_its_chunk_starts(online):
    """After a restart the reader asks the hub for the file from the chunk's byte on, never from its start."""
    from rayft.hub import hub_files
    from rayft.stream import CHUNK_ROWS, ChunkSource
    from rayft_core.config import DatasetSpec

    files = hub_files(DatasetSpec(hf_hub_url="rayft/chat"), "k")
    first = list(ChunkSource(files, 0, 1, None, None, tokenized=False).blocks())
    assert [len(b) for b in first] == [CHUNK_ROWS, CHUNK_ROWS, 600 - 2 * CHUNK_ROWS]  # chunks run across files
    start = tuple(int(x) for x in first[1]["chunk"][0].as_py().split(","))
    assert start[:2] == (0, CHUNK_ROWS) and start[2] > 0
    online.downloads.clear()
    again = list(ChunkSource(files, 0, 1, start, None, tokenized=False).blocks())
    assert [b.equals(a) for a, b in zip(first[1:], again)] == [True, True]
    first_read = next(r for p, r in online.downloads if p.endswith("train-00000-of-00002.jsonl"))
    assert first_read.startswith(f"bytes={start[2]}-"), online.downloads


def test_an_offline_hub_dataset_fails_at_once(online, monkeypatch, tiny_model, workdir):
    from rayft.data import build_run_data
    from rayft.hub import pin_hub_datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = run_config(tiny_model("llama"), [{"hf_hub_url": "rayft/chat"}], workdir / "hub", "hub-offline")
    for read in (build_run_data, pin_hub_datasets):  # read whole, or pinned for a stream
        with pytest.raises(DatasetError, match="hf://rayft/chat is on the Hugging Face hub, which cannot be reached"):
            read(run)
