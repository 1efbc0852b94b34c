"""Every row trains once an epoch, on a real local Ray cluster: the last step of an epoch is filled with masked
padding rows, never dropped, and a step's loss is the mean over all its units on all workers, so the same rows
train to the same losses and gradients whatever the number of workers and the micro-batch size."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rayft.cluster import worker_threads
from rayft_core.train.outputs import read_metrics
from tests.helpers import run_config

pytestmark = pytest.mark.usefixtures("ray_cluster")

TRAIN_ROWS, EVAL_ROWS = 7, 3  # odd: 2 workers split neither without a remainder


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_the_same_rows_train_the_same_on_one_worker_and_two(tiny_model, workdir, alpaca_file):
    """7 rows, 2 epochs: one worker in one micro-batch of 7, against two workers in micro-batches of 2 with 2
    accumulation steps (a global batch of 8: one padding row). The steps must see the same loss and the same
    gradient, the final model the same evaluation loss on 3 rows (one padding row on 2 workers), and each run
    must count every token of both epochs."""
    from rayft.train import train

    data = {
        "train": [{"path": str(alpaca_file), "format": "alpaca", "num_samples": TRAIN_ROWS}],
        "eval": [{"path": str(alpaca_file), "format": "alpaca", "num_samples": EVAL_ROWS}],
    }
    runs = {}
    for name, workers, micro, accumulation in (("one", 1, TRAIN_ROWS, 1), ("two", 2, 2, 2)):
        run = run_config(
            tiny_model("llama"),
            [],
            workdir / "every-row",
            name,
            data=data,
            train={
                "max_steps": None,
                "num_epochs": 2,
                "micro_batch_size": micro,
                "gradient_accumulation_steps": accumulation,
                "eval_steps": 1,
            },
            cluster={"num_workers": workers},
        )
        out = train(run)
        runs[name] = (read_metrics(out), _summary(out))
    (one, one_summary), (two, two_summary) = runs["one"], runs["two"]
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2]  # ceil(7 / 8) steps an epoch
    for a, b in zip(one, two):
        for key in ("train/loss", "train/grad_norm", "eval/loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (key, a, b)
    assert one_summary["epoch"] == {**two_summary["epoch"], "padding_rows": 0}
    assert two_summary["epoch"]["rows"] == TRAIN_ROWS and two_summary["epoch"]["padding_rows"] == 1
    for summary, workers in ((one_summary, 1), (two_summary, 2)):
        assert summary["tokens"] == 2 * summary["epoch"]["tokens"] > 0
        # cluster.cpus_per_worker auto: the test cluster's 4 logical CPUs shared, torch threads capped at the cores
        assert summary["threads_per_worker"] == [worker_threads(summary["cpus_per_worker"], workers)] * workers
        assert summary["gradient_checkpointing"] is False  # auto: a tiny model's activations fit
        assert len(summary["data_wait_seconds_per_worker"]) == workers
    assert all(r["perf/data_wait_s"] >= 0 for r in one + two if "train/loss" in r)


# The other shapes of data, each on 2 workers with a remainder: packed documents, pairs and tagged answers
# (a pair must train whole: its chosen and rejected rows are one row of the dataset).
CASES = {
    "pt-packed": ("pt", "text", {"packing": True, "max_seq_len": 32}),
    "dpo": ("dpo", "pairs", {}),
    "kto": ("kto", "feedback", {}),
}


@pytest.mark.parametrize("case", CASES)
def test_every_row_of_each_stage_trains_once(case, tiny_model, workdir, text_file, pairs_file, feedback_file):
    from rayft.train import train

    stage, data_name, data = CASES[case]
    dataset = {
        "text": {"path": str(text_file), "format": "text", "num_samples": 11},
        "pairs": {"path": str(pairs_file), "format": "sharegpt", "ranking": True, "num_samples": 7},
        "feedback": {
            "path": str(feedback_file),
            "format": "openai",
            "columns": {"messages": "messages", "kto_tag": "label"},
            "num_samples": 7,
        },
    }[data_name]
    run = run_config(
        tiny_model("llama"),
        [dataset],
        workdir / "every-row",
        case,
        stage=stage,
        data=data,
        train={"max_steps": None, "num_epochs": 1, "micro_batch_size": 2},
        cluster={"num_workers": 2},
    )
    summary = _summary(train(run))
    rows = summary["epoch"]["rows"]
    assert rows % 4 and summary["epoch"]["padding_rows"] == 4 - rows % 4  # a remainder, filled
    assert summary["steps"] == math.ceil(rows / 4)
    assert summary["tokens"] == summary["epoch"]["tokens"] > 0
