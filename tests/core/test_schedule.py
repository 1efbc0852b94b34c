"""train.schedule (rayft_core.schedule) and the config's hyperparameters winning over a checkpoint's
(rayft_core.train.hyperparameters): in-process DeepSpeed engines through the supervised loop."""

from __future__ import annotations

import shutil

import pytest
import torch

from rayft_core.config import validate_config
from rayft_core.schedule import at_step
from rayft_core.schema import ConfigError
from tests.helpers import QA, run_config


def _run(model_dir, tmp_path, name, **train):
    return run_config(
        model_dir,
        [{"path": "unused.json", "format": "alpaca"}],
        tmp_path,
        name,
        tuning={"method": "lora", "rank": 4, "dropout": 0.0},
        train={"max_steps": 6, "lr_scheduler": "constant", **train},
        deepspeed={"zero_stage": 0},
        model={"dtype": "float32"},
    )


def _train(run, resume_from=None):
    """The loop on one process over a fixed batch: its records, the checkpoints it saved (kept), its engine's
    optimizer param groups at the end."""
    from rayft_core.model.checks import _single_process_group
    from rayft_core.model.loader import load_tokenizer
    from rayft_core.train import loop
    from rayft_core.train.plan import TrainPlan
    from rayft_core.train.stages import STAGES

    _single_process_group()
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "tools": None}
        for q, a in QA
    ]
    encoded = STAGES["sft"].encode_rows(rows, load_tokenizer(run.model), run)
    batch = {k: encoded[k][:4] for k in ("input_ids", "labels")}
    records, checkpoints, engines = [], {}, []

    def report(record, checkpoint_dir=None):
        records.append(record)
        if checkpoint_dir:
            checkpoints[record["step"]] = checkpoint_dir

    steps = run.train.max_steps
    plan = TrainPlan(micro_batches_per_epoch=1, num_epochs=steps, total_steps=steps)
    real_session = loop.WorkerSession

    class Kept(real_session):  # the engine, to read its param groups after the run
        def setup(self, stage):
            super().setup(stage)
            engines.append(self.engine)

    loop.WorkerSession = Kept
    try:
        loop.train_worker(run, plan, lambda epoch: iter([batch]), report, 0, 1, resume_from=resume_from)
    finally:
        loop.WorkerSession = real_session
    return records, checkpoints, engines[0].lr_scheduler.optimizer.param_groups


def test_a_schedule_changes_the_learning_rate_weight_decay_and_dropout_after_its_step(tiny_model, tmp_path):
    run = _run(
        tiny_model(),
        tmp_path,
        "scheduled",
        learning_rate=1e-3,
        schedule=[
            {"after_step": 2, "set": {"train.learning_rate": 4e-3, "train.weight_decay": 0.1, "tuning.dropout": 0.2}},
            {"after_step": 4, "set": {"train.learning_rate": 2e-3}},
        ],
    )
    records, _, groups = _train(run)
    assert [r["train/lr"] for r in records] == pytest.approx([1e-3, 1e-3, 4e-3, 4e-3, 2e-3, 2e-3])
    assert {g["weight_decay"] for g in groups} == {0.1}  # LoRA's matrices are all decayed
    assert at_step(run, 3).tuning.dropout == 0.2 and at_step(run, 1).tuning.dropout == 0.0


def test_a_resumed_run_trains_with_its_configs_learning_rate_not_the_checkpoints(tiny_model, tmp_path):
    first = _run(tiny_model(), tmp_path, "first", learning_rate=1e-3, warmup_ratio=0.5, lr_scheduler="linear")
    first = validate_config({**first.model_dump(mode="json"), "checkpoint": {"save_steps": 2}})
    records, checkpoints, _ = _train(first)
    assert [r["train/lr"] for r in records][:3] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])  # warmup: 3 steps
    again = first.model_dump(mode="json")
    again["train"].update(learning_rate=5e-3, weight_decay=0.05, lr_scheduler="constant", warmup_ratio=0.0)
    again["output"]["name"] = "second"
    checkpoint = shutil.copytree(checkpoints[2], tmp_path / "checkpoint-2")
    resumed, _, groups = _train(validate_config(again), resume_from=checkpoint)
    assert [r["step"] for r in resumed] == [3, 4, 5, 6]
    assert [r["train/lr"] for r in resumed] == pytest.approx([5e-3] * 4)  # before this fix: the checkpoint's 1e-3
    assert {g["weight_decay"] for g in groups} == {0.05}
    assert all(torch.isfinite(torch.tensor(r["train/loss"])) for r in resumed)


def test_a_schedule_names_what_cannot_change_during_a_run():
    base = {"model": {"name_or_path": "m"}, "data": {"train": [{"path": "d.json"}]}}
    with pytest.raises(ConfigError) as e:
        validate_config({**base, "train": {"schedule": [{"after_step": 3, "set": {"train.learning_rat": 1e-4}}]}})
    assert "did you mean 'train.learning_rate'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        validate_config({**base, "train": {"schedule": [{"after_step": 3, "set": {"tuning.rank": 16}}]}})
    assert "tuning.rank cannot change during a run" in str(e.value)
    with pytest.raises(ConfigError) as e:
        validate_config({**base, "train": {"schedule": [{"after_step": 3, "set": {"train.learning_rate": -1}}]}})
    assert "train.schedule[0].set.train.learning_rate: Input should be greater than 0, got -1" in str(e.value)
    with pytest.raises(ConfigError) as e:
        validate_config(
            {**base, "tuning": "full", "train": {"schedule": [{"after_step": 3, "set": {"tuning.dropout": 0.1}}]}}
        )
    assert "train.schedule[0].set.tuning.dropout: tuning method full has no dropout" in str(e.value)


def test_population_based_sweeps_take_only_keys_a_run_can_change_and_pb2_only_ranges():
    """The PBT and PB2 rules of the tune section (the trials themselves: tests/cluster/test_pbt_ray.py), and the
    scheduler each builds (Ray Tune's)."""
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers.pb2 import PB2

    from rayft.tune import _tune_config

    base = {
        "model": {"name_or_path": "m"},
        "data": {"train": [{"path": "d.json"}], "val_size": 8},
        "train": {"max_steps": 12, "eval_steps": 4},
    }

    def sweep(scheduler, space):
        return validate_config({**base, "tune": {"space": space, "scheduler": scheduler}})

    lr = {"train.learning_rate": {"loguniform": [1e-5, 1e-3]}}
    with pytest.raises(ConfigError, match="tuning.rank cannot do"):
        sweep("pbt", {**lr, "tuning.rank": {"choice": [4, 8]}})
    with pytest.raises(ConfigError, match="pb2 models each key as a range; give tuning.dropout uniform"):
        sweep("pb2", {**lr, "tuning.dropout": {"choice": [0.0, 0.1]}})
    pbt = sweep("pbt", {**lr, "tuning.dropout": {"choice": [0.0, 0.1]}})
    scheduler = _tune_config(pbt, pbt.tune, 2).scheduler
    assert type(scheduler) is PopulationBasedTraining and scheduler._perturbation_interval == 4  # eval_steps
    pb2 = sweep("pb2", {**lr, "train.weight_decay": {"uniform": [0.0, 0.1]}})
    scheduler = _tune_config(pb2, pb2.tune, 2).scheduler
    assert type(scheduler) is PB2
    assert scheduler._hyperparam_bounds == {
        "params": {"train.learning_rate": [1e-5, 1e-3], "train.weight_decay": [0.0, 0.1]}
    }
