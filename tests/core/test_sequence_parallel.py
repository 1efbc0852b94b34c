"""Sequence parallelism (rayft_core.train.sequence_parallel, DeepSpeed Ulysses on gloo): two workers splitting each
sequence train exactly as one worker does on the same rows, under ZeRO-3 (and resume from its checkpoint) and
under ZeRO-2 with gradient accumulation. The real supervised loop (train_worker) runs in plain processes, as a
Ray Train worker runs it, without the cluster."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from rayft_core.model.tiny import build_tiny_model, build_tokenizer

QA = [
    ("What is two plus two?", "Four."),
    ("Name a colour of the sky on a clear day.", "Blue, mostly."),
    ("Say hi.", "Hi!"),
    ("Count to five, please, in words.", "One, two, three, four, five."),
    ("What do bees make?", "Honey."),
    ("Which is larger, seven or nine?", "Nine is larger than seven."),
    ("Spell cat.", "C A T"),
    ("What comes after Monday?", "Tuesday comes after Monday."),
]
STEPS = 4  # two epochs of the eight rows, four rows a step


def _run(
    model_dir: Path, out: Path, workers: int, sp: int, micro: int, zero: int = 0, accumulate: int = 1, **sections: Any
) -> Any:
    from rayft_core.model.matrix import run_config

    train = {"max_steps": STEPS, "micro_batch_size": micro, "gradient_accumulation_steps": accumulate}
    return run_config(
        model_dir, out,
        tuning={"method": "full"},
        train={**train, "learning_rate": 1e-2, "logging_steps": 1, "seed": 0},
        deepspeed={"zero_stage": zero},
        cluster={"num_workers": workers, "sequence_parallel_size": sp},
        **sections,
    )  # fmt: skip


def _train(run: Any, rank: int, world: int, rows_of: list[list[int]], out: Path, resume_from: str | None = None):
    """train_worker on this rank's micro-batches (row indices per micro-batch, the same every epoch); rank 0's
    records, and each checkpoint merged into out/ckpt-STEP as Ray Train merges the ranks' directories."""
    from rayft_core.train.loop import train_worker
    from rayft_core.train.plan import TrainPlan
    from rayft_core.train.stages import STAGES

    stage, tok = STAGES["sft"], __import__("transformers").AutoTokenizer.from_pretrained(run.model.name_or_path)
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "tools": None} for q, a in QA]  # fmt: skip
    encoded = stage.encode_rows(rows, tok, run)
    batches = [{k: [encoded[k][i] for i in ids] for k in ("input_ids", "labels")} for ids in rows_of]
    records: list[dict] = []

    def report(record: dict, checkpoint_dir: str | None = None) -> None:
        records.append(record)
        if checkpoint_dir:
            shutil.copytree(checkpoint_dir, out / f"ckpt-{record['step']}", dirs_exist_ok=True)

    epochs = STEPS * run.train.gradient_accumulation_steps // len(rows_of)
    plan = TrainPlan(micro_batches_per_epoch=len(rows_of), num_epochs=epochs, total_steps=STEPS)
    train_worker(run, plan, lambda epoch: iter(batches), report, rank, world, resume_from=resume_from)
    return records


def _sp_rank(rank: int, model_dir: str, root: str, zero: int) -> None:
    """Two workers, one group: ZeRO-3 two rows a micro-batch, resumed from step 2's checkpoint; or ZeRO-2 one row
    a micro-batch, two micro-batches a step."""
    import os

    import torch.distributed as dist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", DS_ACCELERATOR="cpu")
    dist.init_process_group("gloo", store=dist.FileStore(f"{root}/store-{zero}", 2), rank=rank, world_size=2)
    out = Path(root, f"zero{zero}")
    mine = [[0, 1], [4, 5]] if rank == 0 else [[2, 3], [6, 7]]  # step 1: rows 0-3, step 2: rows 4-7
    if zero == 3:
        run = _run(Path(model_dir), out / "sp", 2, 2, 2, zero=3, checkpoint={"save_steps": 2})
        records = _train(run, rank, 2, mine, out)
        resumed = _train(run, rank, 2, mine, out, resume_from=str(out / "ckpt-2"))
    else:
        run = _run(Path(model_dir), out / "sp", 2, 2, 1, zero=2, accumulate=2)
        records, resumed = _train(run, rank, 2, [[i] for rows in mine for i in rows], out), []
    if rank == 0:
        Path(root, f"sp{zero}.json").write_text(json.dumps({"records": records, "resumed": resumed}))
    dist.destroy_process_group()


def _one_worker(rank: int, model_dir: str, root: str) -> None:
    """The same rows on one worker without sequence parallelism: four rows a micro-batch."""
    from rayft_core.model.checks import _single_process_group

    _single_process_group()
    records = _train(_run(Path(model_dir), Path(root, "one"), 1, 1, 4), 0, 1, [[0, 1, 2, 3], [4, 5, 6, 7]], Path(root))
    Path(root, "one.json").write_text(json.dumps(records))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("sp")
    tok = build_tokenizer([f"{q} {a}" for q, a in QA] * 20)
    model_dir = build_tiny_model("llama", tok, root / "model")
    for zero in (3, 2):
        mp.start_processes(_sp_rank, args=(str(model_dir), str(root), zero), nprocs=2, start_method="spawn")
    mp.start_processes(_one_worker, args=(str(model_dir), str(root)), nprocs=1, start_method="spawn")
    sp = {zero: json.loads((root / f"sp{zero}.json").read_text()) for zero in (3, 2)}
    return sp, json.loads((root / "one.json").read_text())


def _losses(records: list[dict]) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


@pytest.mark.parametrize("zero", [3, 2])
def test_two_workers_splitting_each_sequence_train_as_one_worker_does(runs, zero):
    sp, one = runs
    a, b = _losses(sp[zero]["records"]), _losses(one)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    assert all(abs(a[s] - b[s]) < 1e-4 for s in a), (a, b)
    assert a[STEPS] < a[1]  # and it learns


def test_a_sequence_parallel_zero3_run_resumes_from_its_checkpoint(runs):
    sp, _ = runs
    a, resumed = _losses(sp[3]["records"]), _losses(sp[3]["resumed"])
    assert sorted(resumed) == [3, 4]
    assert all(abs(resumed[s] - a[s]) < 1e-4 for s in resumed), (resumed, a)


def test_the_run_refuses_what_sequence_parallelism_cannot_do():
    from rayft_core.config import validate_config
    from rayft_core.schema import ConfigError
    from rayft_core.train.sequence_parallel import model_problems

    base = {"model": {"name_or_path": "m"}, "data": {"train": [{"path": "d.json"}]}}
    cases = {
        "does not divide cluster.num_workers (3)": {"cluster": {"num_workers": 3, "sequence_parallel_size": 2}},
        "stage dpo does not support it yet": {"stage": "dpo", "cluster": {"num_workers": 2, "sequence_parallel_size": 2}},
        "data.packing: packed rows restart": {
            "data": {**base["data"], "packing": True}, "cluster": {"num_workers": 2, "sequence_parallel_size": 2},
        },
    }  # fmt: skip
    for message, sections in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            validate_config({**base, **sections})
    from transformers import LlamaConfig

    assert model_problems(2, LlamaConfig(num_attention_heads=4, num_key_value_heads=2)) == []
    assert (
        "must divide the model's 6 attention heads"
        in model_problems(4, LlamaConfig(hidden_size=96, num_attention_heads=6))[0]
    )
