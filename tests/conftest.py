"""Session fixtures: a tokenizer trained here, tiny models of real architectures, small data, one Ray cluster."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import QA, SHARED


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test skipped for want of ../shared (real tokenizers, LLaMA-Factory's data) fails where ../shared is
    present, as it is in CI: the claims that rest on those files are checked on every submission, and only a
    user's fresh clone without them skips."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and SHARED.is_dir() and "../shared" in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"skipped although ../shared is present ({SHARED}): {report.longrepr}"


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rayft")


@pytest.fixture(scope="session")
def tokenizer(workdir: Path):
    from rayft_core.model.tiny import build_tokenizer

    texts = [q + " " + a for q, a in QA] * 20 + ["the quick brown fox jumps over the lazy dog"] * 20
    return build_tokenizer(texts, vocab_size=300, save_dir=workdir / "tokenizer")


@pytest.fixture(scope="session")
def tiny_model(workdir: Path, tokenizer):
    """tiny_model(arch) -> directory of a saved 2-layer model of that architecture (built once)."""
    from rayft_core.model.tiny import build_tiny_model

    built: dict[str, Path] = {}

    def get(arch: str = "llama") -> Path:
        if arch not in built:
            built[arch] = build_tiny_model(arch, tokenizer, workdir / f"model-{arch}")
        return built[arch]

    return get


@pytest.fixture(scope="session")
def alpaca_file(workdir: Path) -> Path:
    path = workdir / "alpaca.json"
    rows = [{"instruction": q, "input": "", "output": a} for q, a in QA] * 16
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture(scope="session")
def sharegpt_file(workdir: Path) -> Path:
    path = workdir / "sharegpt.jsonl"
    with open(path, "w") as f:
        for q, a in QA * 16:
            f.write(json.dumps({"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}) + "\n")
    return path


@pytest.fixture(scope="session")
def text_file(workdir: Path) -> Path:
    path = workdir / "corpus.txt"
    path.write_text("\n".join(f"{q} {a}" for q, a in QA * 40) + "\n")
    return path


WRONG_ANSWERS = ["the lazy dog", "brown fox jumps", "the quick dog", "fox over the dog"]


@pytest.fixture(scope="session")
def pairs_file(workdir: Path) -> Path:
    """Separable preference pairs: the right answer against fox-and-dog noise (LLaMA-Factory's sharegpt ranking shape)."""
    path = workdir / "pairs.jsonl"
    rows = [
        {
            "conversations": [{"from": "human", "value": q}],
            "chosen": {"from": "gpt", "value": a},
            "rejected": {"from": "gpt", "value": WRONG_ANSWERS[i % len(WRONG_ANSWERS)]},
        }
        for i, (q, a) in enumerate(QA * 10)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="session")
def feedback_file(workdir: Path) -> Path:
    """KTO rows (openai messages + a boolean label): right answers desirable, noise undesirable."""
    path = workdir / "feedback.jsonl"
    rows = []
    for i, (q, a) in enumerate(QA * 5):
        for answer, good in ((a, True), (WRONG_ANSWERS[i % len(WRONG_ANSWERS)], False)):
            rows.append(
                {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}], "label": good}
            )
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="session")
def s3_bucket():
    """An S3-compatible server on loopback (moto's, a real HTTP server) and an empty bucket: the stand-in
    for a cloud bucket. Its endpoint and dummy credentials go into the environment before the Ray
    cluster starts, so Ray's workers reach it the way they would reach S3."""
    import shutil
    import socket
    import subprocess
    import sys
    import time

    import pyarrow.fs as pafs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True).create_dir("rayft-test")
    yield "rayft-test"
    proc.terminate()


@pytest.fixture(scope="session")
def ray_cluster(s3_bucket):
    """One local Ray cluster for the whole session (4 logical CPUs: 2 workers + Ray Data tasks)."""
    import ray

    from rayft.cluster import connect

    os.environ.pop("RAY_ADDRESS", None)
    connect(num_cpus=4)
    yield
    ray.shutdown()
