import pytest

from rayft_core.train.loop import TrainPlan
from rayft_core.train.optim import lr_lambda
from rayft_core.config import validate_config


def test_warmup_then_cosine_or_linear_decay():
    assert [lr_lambda(s, 10, 2, "cosine") for s in (0, 1)] == [0.5, 1.0]
    assert lr_lambda(2, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_lambda(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_lambda(10, 10, 2, "cosine") == pytest.approx(0.0)
    assert lr_lambda(6, 10, 2, "linear") == pytest.approx(0.5)
    assert lr_lambda(9, 10, 0, "constant") == 1.0


def test_plan_gives_every_worker_the_same_number_of_micro_batches():
    run = validate_config({"model": {"name_or_path": "m"}, "data": {"train": [{"path": "d", "format": "alpaca"}]},
                           "train": {"micro_batch_size": 4, "gradient_accumulation_steps": 2, "num_epochs": 2.5},
                           "cluster": {"num_workers": 3}})
    plan = TrainPlan.from_rows(run, 100)  # 33 rows a worker -> 8 micro-batches -> 4 steps an epoch
    assert (plan.micro_batches_per_epoch, plan.total_steps, plan.num_epochs) == (8, 10, 3)
    with pytest.raises(ValueError, match="fewer than one optimizer step needs"):
        TrainPlan.from_rows(run, 20)
