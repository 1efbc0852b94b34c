"""The data pipeline on a real local Ray cluster: dataset_info names, splits, bad rows, mixing, the cache,
prepared Parquet, streaming into a 2-worker run with evaluation, and the preview command."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from rayft.cli import main
from rayft.data import build_run_data, tokenize_section
from rayft.prepared import materialized, write_prepared
from rayft.sources import MANIFEST
from rayft_core.data.formats import DataError
from rayft_core.data.mixing import interleave_counts
from rayft_core.data.registry import DatasetError
from rayft_core.train.outputs import read_metrics
from tests.helpers import run_config

pytestmark = pytest.mark.usefixtures("ray_cluster")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


def _named(tiny_model, workdir, names, name="data", **data):
    return run_config(
        tiny_model("llama"),
        [{"dataset": n} for n in names],
        workdir / "data-runs",
        name,
        model={"name_or_path": str(tiny_model("llama")), "template": "qwen"},
        data={"dataset_dir": str(EXAMPLES), "train": [{"dataset": n} for n in names], "max_seq_len": 256, **data},
    ).with_absolute_paths()


def _ids(ds) -> list[list[int]]:
    return [list(r["input_ids"]) for r in ds.take_all()]


def test_dataset_names_tools_and_validation_split(tiny_model, workdir):
    run = _named(tiny_model, workdir, ["assistant_alpaca", "assistant_sharegpt", "weather_tools"], val_size=0.25)
    data = build_run_data(run)
    sizes = {
        "assistant_alpaca": len(json.loads((EXAMPLES / "assistant_alpaca.json").read_text())),
        "assistant_sharegpt": 8,
        "weather_tools": 10,
    }
    assert {d.label: d.examples for d in data.report.datasets} == sizes
    assert data.train_rows + data.eval_rows == sum(sizes.values())
    assert data.eval_rows == pytest.approx(0.25 * sum(sizes.values()), abs=1)
    assert data.report.num_bad == 0


def test_bad_rows_stop_the_run_with_reasons_or_are_skipped_within_the_limit(tiny_model, workdir, tmp_path):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(18)] + [
        {"instruction": "no answer"},
        {"output": 1},
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run = run_config(tiny_model("llama"), [{"path": str(path)}], workdir / "data-runs", "bad")
    with pytest.raises(DataError) as e:
        build_run_data(run)
    msg = str(e.value)
    assert "2 unusable rows (2 missing column)" in msg and f"{path}: row 19: missing column" in msg
    assert "data.max_bad_fraction allows 0.00%" in msg
    run.data.max_bad_fraction = 0.2
    assert build_run_data(run).train_rows == 18


def test_interleave_is_seeded_and_takes_the_drawn_counts(tiny_model, workdir):
    run = _named(
        tiny_model,
        workdir,
        ["assistant_alpaca", "assistant_sharegpt"],
        mix="interleave",
        mix_probabilities=[0.5, 0.5],
        mix_stopping="all_exhausted",
    )
    first, second = build_run_data(run), build_run_data(run)
    assert _ids(first.train) == _ids(second.train)
    sizes = [d.rows for d in first.report.datasets]
    assert first.train_rows == sum(interleave_counts(sizes, [0.5, 0.5], "all_exhausted", run.train.seed))
    assert first.train_rows > sum(sizes)  # the small dataset was repeated


def test_prepare_streams_rows_to_parquet_leaving_bad_rows_out(tiny_model, workdir, tmp_path):
    """`rayft data prepare` of a .jsonl file: read in chunks of lines by the tokenizing tasks and written as it is
    tokenized. The bad rows are counted in the manifest (file and line shown) and not written; past
    data.max_bad_fraction the prepare fails and leaves nothing behind."""
    lines = [json.dumps({"instruction": f"question {i}", "output": f"answer {i}"}) for i in range(300)]
    lines[41] = '{"instruction": "no output"'  # line 42
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "run.yaml"
    run = run_config(tiny_model("llama"), [{"path": str(data)}], workdir, "prep-stream")
    run.data.max_bad_fraction = 0.01
    cfg.write_text(json.dumps(run.model_dump(mode="json")))
    out = tmp_path / "prepared"
    result = CliRunner().invoke(main, ["data", "prepare", str(cfg), "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / MANIFEST).read_text())
    (report,) = manifest["datasets"]
    assert report["rows"] == manifest["rows"] == pq.read_table(out).num_rows == 299
    assert report["bad"] == {"invalid JSON": 1} and f"{data}: row 42: invalid JSON" in report["shown"][0]
    assert sorted(pq.read_table(out, columns=["num_examples"])["num_examples"].to_pylist()) == [1] * 299
    strict = tmp_path / "prepared-strict"
    run.data.max_bad_fraction = 0.0
    cfg.write_text(json.dumps(run.model_dump(mode="json")))
    failed = CliRunner().invoke(main, ["data", "prepare", str(cfg), "-o", str(strict)])
    assert failed.exit_code != 0 and "row 42" in failed.output, failed.output
    assert not strict.exists() and not [p for p in tmp_path.iterdir() if "rayft-tmp" in p.name]


def test_prepare_cache_and_training_from_prepared_parquet(tiny_model, workdir, tmp_path, caplog):
    cfg = tmp_path / "run.yaml"
    run = _named(tiny_model, workdir, ["assistant_alpaca", "assistant_sharegpt"], packing=True)
    cfg.write_text(json.dumps(run.model_dump(mode="json")))
    out = tmp_path / "prepared"
    result = CliRunner().invoke(main, ["data", "prepare", str(cfg), "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / MANIFEST).read_text())
    table = pq.read_table(out)
    assert {"input_ids", "labels", "position_ids"} <= set(table.column_names) and table.num_rows == manifest["rows"]
    assert any(x == -100 for x in table["labels"][0].as_py())
    # again: refused, then replaced with --overwrite; a user's file inside blocks both, and one beside is never touched
    (tmp_path / "notes.txt").write_text("mine")
    again = CliRunner().invoke(main, ["data", "prepare", str(cfg), "-o", str(out)])
    assert again.exit_code == 2 and "already holds prepared data written by rayft" in again.output
    assert CliRunner().invoke(main, ["data", "prepare", str(cfg), "-o", str(out), "--overwrite"]).exit_code == 0
    assert pq.read_table(out).num_rows == manifest["rows"]  # replaced, not appended to
    (out / "mine.parquet.bak").write_text("mine")
    for target, flags in ((out, []), (out, ["--overwrite"]), (tmp_path, ["--overwrite"])):
        refused = CliRunner().invoke(main, ["data", "prepare", str(cfg), "-o", str(target), *flags])
        assert refused.exit_code == 2 and "holds files rayft did not write" in refused.output, refused.output
    assert (out / "mine.parquet.bak").read_text() == "mine" and (tmp_path / "notes.txt").read_text() == "mine"
    assert cfg.is_file() and not [p for p in tmp_path.iterdir() if "rayft-tmp" in p.name]
    (out / "mine.parquet.bak").unlink()

    from_parquet = run.model_copy(deep=True)
    from_parquet.data.train = [type(run.data.train[0])(path=str(out))]
    assert sorted(map(tuple, _ids(build_run_data(from_parquet).train))) == sorted(
        map(tuple, table["input_ids"].to_pylist())
    )
    from_parquet.data.packing = False
    with pytest.raises(DatasetError, match="prepared with packing on; set data.packing: true"):
        build_run_data(from_parquet)

    cached = run.model_copy(deep=True)
    cached.data.cache_dir = str(tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="rayft"):
        first, _ = tokenize_section(cached, "data.train")
        assert "cached in" in caplog.text
        caplog.clear()
        second, report = tokenize_section(cached, "data.train")
        assert "from the cache" in caplog.text and report.rows == manifest["rows"]
    assert sorted(map(tuple, _ids(first))) == sorted(map(tuple, _ids(second)))


def test_hub_dataset_offline_fails_at_once(tiny_model, workdir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = run_config(tiny_model("llama"), [{"hf_hub_url": "llamafactory/alpaca_en"}], workdir / "data-runs", "hub")
    start = time.monotonic()
    with pytest.raises(DatasetError, match="on the Hugging Face hub, which cannot be reached"):
        build_run_data(run)
    assert time.monotonic() - start < 5


def test_preview_marks_trained_tokens_and_reports(tiny_model, workdir, tmp_path):
    run = _named(tiny_model, workdir, ["assistant_sharegpt"])
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps(run.model_dump(mode="json")))
    result = CliRunner().invoke(main, ["data", "preview", str(cfg), "-n", "1"])
    assert result.exit_code == 0, result.output
    assert "«I am an assistant fine-tuned with rayft" in result.output  # the answer is trained on...
    assert "«Who are you?" not in result.output  # ...the question is not
    assert (
        "assistant_sharegpt" in result.output
        and "tokens per row:" in result.output
        and "no unusable rows" in result.output
    )


def test_streamed_packed_sft_with_evaluation_two_workers(tiny_model, workdir, alpaca_file, sharegpt_file):
    """Streaming (nothing materialized) into 2 ZeRO-2 workers, packed rows, eval loss every 2 steps."""
    from rayft.train import train

    run = run_config(
        tiny_model("llama"),
        [{"path": str(alpaca_file), "format": "alpaca"}],
        workdir / "runs",
        "stream",
        data={
            "train": [{"path": str(alpaca_file), "format": "alpaca"}],
            "eval": [{"path": str(sharegpt_file), "format": "sharegpt", "num_samples": 16}],
            "max_seq_len": 128,
            "streaming": True,
            "packing": True,
        },
        train={"max_steps": 4, "micro_batch_size": 2, "eval_steps": 2, "learning_rate": 5e-3},
        cluster={"num_workers": 2},
    )
    out = train(run)
    rows = read_metrics(out)
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
    evals = [r["eval/loss"] for r in rows if "eval/loss" in r]
    assert len(evals) == 2 and evals[1] < evals[0]


def test_llamafactory_yaml_trains_as_it_is(tiny_model, workdir):
    """A LLaMA-Factory llama3_lora_sft.yaml, only the model, data folder and length changed by overrides."""
    lf_yaml = EXAMPLES.parent / "llamafactory" / "llama3_lora_sft.yaml"
    out = workdir / "lf-runs"
    result = CliRunner().invoke(
        main,
        [
            "train",
            str(lf_yaml),
            f"model.name_or_path={tiny_model('llama')}",
            "model.dtype=float32",
            f"data.dataset_dir={EXAMPLES}",
            "data.train=[{dataset: assistant_alpaca}, {dataset: weather_tools}]",
            "data.max_seq_len=256",
            "train.max_steps=3",
            f"output.storage_path={out}",
        ],
    )  # the tiny model has 512 positions
    assert result.exit_code == 0, result.output
    assert "ddp_timeout" in result.output  # keys rayft cannot honour are named, not dropped
    rows = read_metrics(out / "sft")
    assert rows[-1]["step"] == 3 and {"train/loss", "eval/loss"} <= set(rows[-1])  # eval: its val_size 0.1


def test_datasets_on_s3_by_glob_and_directory(tiny_model, workdir, s3_bucket, alpaca_file):
    """Files in an S3 bucket (an S3-compatible server on loopback) read by Ray's tasks through pyarrow."""
    import pyarrow.fs as pafs

    s3, _ = pafs.FileSystem.from_uri(f"s3://{s3_bucket}")
    rows = json.loads(alpaca_file.read_text())
    for i in range(2):
        with s3.open_output_stream(f"{s3_bucket}/chats/part-{i}.jsonl") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows[i::2]).encode())
    for path in (f"s3://{s3_bucket}/chats/*.jsonl", f"s3://{s3_bucket}/chats"):
        run = run_config(tiny_model("llama"), [{"path": path, "format": "alpaca"}], workdir / "data-runs", "s3")
        assert build_run_data(run).train_rows == len(rows)
    ds, report = tokenize_section(run, "data.train")  # prepared into the bucket, then trained from there
    write_prepared(f"s3://{s3_bucket}/prepared", run, materialized(ds, report))
    run.data.train = [type(run.data.train[0])(path=f"s3://{s3_bucket}/prepared")]
    assert build_run_data(run).train_rows == len(rows)
    with pytest.raises(DatasetError, match="no data files at 's3://rayft-test/nothing-here'"):
        build_run_data(run_config(tiny_model("llama"), [{"path": f"s3://{s3_bucket}/nothing-here"}], workdir, "s3"))
