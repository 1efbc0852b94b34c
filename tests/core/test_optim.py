import pytest

from rayft_core.config import validate_config
from rayft_core.train.optim import lr_lambda
from rayft_core.train.plan import TrainPlan, padding_rows


def test_warmup_then_cosine_or_linear_decay():
    assert [lr_lambda(s, 10, 2, "cosine") for s in (0, 1)] == [0.5, 1.0]
    assert lr_lambda(2, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_lambda(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_lambda(10, 10, 2, "cosine") == pytest.approx(0.0)
    assert lr_lambda(6, 10, 2, "linear") == pytest.approx(0.5)
    assert lr_lambda(9, 10, 0, "constant") == 1.0


def test_plan_trains_every_row_and_gives_every_worker_the_same_number_of_micro_batches():
    run = validate_config(
        {
            "model": {"name_or_path": "m"},
            "data": {"train": [{"path": "d", "format": "alpaca"}]},
            "train": {"micro_batch_size": 4, "gradient_accumulation_steps": 2, "num_epochs": 2.5},
            "cluster": {"num_workers": 3},
        }
    )
    # global batch 24: 100 rows are ceil(100 / 24) = 5 steps an epoch, the last with 4 rows and 20 padding rows
    plan = TrainPlan.from_rows(run, 100)
    assert (plan.micro_batches_per_epoch, plan.total_steps, plan.num_epochs) == (10, 13, 3)  # 2.5 epochs: ceil
    assert padding_rows(100, run.global_batch_size) == 20 and padding_rows(96, 24) == 0
    assert TrainPlan.from_rows(run, 20).micro_batches_per_epoch == 2  # fewer rows than a step: one padded step
    with pytest.raises(ValueError, match="holds no rows"):
        TrainPlan.from_rows(run, 0)


MINIMAL = {"model": {"name_or_path": "m"}, "data": {"train": [{"path": "d", "format": "alpaca"}]}}


def test_biases_and_norm_scales_are_not_decayed_and_loraplus_speeds_up_b_only():
    import torch

    from rayft_core.train.optim import build_param_groups

    model = torch.nn.ModuleDict(
        {"lora_A": torch.nn.Linear(4, 4), "lora_B": torch.nn.Linear(4, 4), "norm": torch.nn.LayerNorm(4)}
    )
    train = {"weight_decay": 0.1, "learning_rate": 1e-3}
    full = build_param_groups(model, validate_config({**MINIMAL, "tuning": "full", "train": train}))
    assert {(g["lr"], g["weight_decay"], len(g["params"])) for g in full} == {(1e-3, 0.1, 2), (1e-3, 0.0, 4)}
    lora = build_param_groups(
        model, validate_config({**MINIMAL, "train": train, "tuning": {"method": "lora", "loraplus_lr_ratio": 16}})
    )
    assert {(g["lr"], g["weight_decay"], len(g["params"])) for g in lora} == {
        (1e-3, 0.1, 1),
        (1e-3, 0.0, 3),
        (1e-3 * 16, 0.1, 1),
        (1e-3 * 16, 0.0, 1),
    }


def test_every_method_names_a_registered_optimizer_and_galore_names_its_extra(monkeypatch):
    import importlib.util

    from rayft_core.methods import METHODS
    from rayft_core.train.optim import OPTIMIZERS

    assert {m.optimizer for m in METHODS.values()} <= set(OPTIMIZERS)
    run = validate_config({**MINIMAL, "tuning": "galore", "deepspeed": {"zero_stage": 0}})
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "galore_torch" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r"^tuning.method galore needs galore-torch: pip install 'rayft\[galore\]'$"):
        OPTIMIZERS[run.tuning.optimizer]([], run, None)


def test_weights_sharded_by_zero3_are_decayed_and_their_norms_are_not():
    """A ZeRO-3 parameter is a flat 1-D shard; its decay is decided by its real shape (ds_shape). Before, every
    sharded weight looked like a bias, and train.weight_decay did nothing under ZeRO-3."""
    import deepspeed
    import torch

    from rayft_core.methods.base import decay_groups
    from rayft_core.model.checks import _single_process_group

    _single_process_group()
    run = validate_config(
        {"model": {"name_or_path": "m"}, "data": {"train": [{"path": "d"}]}, "train": {"weight_decay": 0.1}}
    )
    with deepspeed.zero.Init(config_dict_or_path={"zero_optimization": {"stage": 3}, "train_batch_size": 1}):
        model = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=True), torch.nn.LayerNorm(64))
    assert model[0].weight.ndim == 1 and model[0].weight.ds_shape == (64, 64)  # sharded
    groups = decay_groups(model, run, lambda name: 1e-3)
    decayed = [p for g in groups if g["weight_decay"] == 0.1 for p in g["params"]]
    assert decayed == [model[0].weight]
