"""Methods that train part of the model at a time: BAdam's layer mode (one decoder layer trains, then the next, and
the optimizer holds that layer's state alone), its ratio mode (a share of each weight's entries), their
checkpoint through a real DeepSpeed engine, and LLaMA-Factory's use_badam keys."""

from __future__ import annotations

import pytest
import torch

from rayft_core.llamafactory import translate
from rayft_core.model.adapters import apply_tuning
from rayft_core.model.loader import load_model, load_tokenizer
from rayft_core.schema import ConfigError
from rayft_core.train.block_adam import block_order
from rayft_core.train.losses import compute_causal_lm_loss
from rayft_core.train.optim import build_optimizer
from tests.core.test_tuning import _batch
from tests.helpers import LF_MINIMAL, sft_engine_and_steps, unit_run


def _run(tiny_model, workdir, tuning, **sections):
    return unit_run(tiny_model("llama"), workdir, tuning, **sections)


def _steps(run, steps):
    """Build the model as a worker does and step it; per step, the names of the parameters that changed, and the
    losses (checked to fall)."""
    tokenizer = load_tokenizer(run.model)
    model = apply_tuning(load_model(run, tokenizer), run)
    optimizer = build_optimizer(model, run)
    batch = _batch(tokenizer)
    changed, losses = [], []
    for _ in range(steps):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        loss, _ = compute_causal_lm_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        changed.append({n for n, p in model.named_parameters() if not torch.equal(before[n], p)})
    assert losses[-1] < losses[0], losses
    return model, optimizer, changed


def _layer(name: str) -> int | None:
    return int(name.split("layers.")[1].split(".")[0]) if "layers." in name else None


def test_badam_layer_mode_trains_one_layer_at_a_time_with_that_layers_state_only(tiny_model, workdir):
    run = _run(tiny_model, workdir, {"method": "badam", "switch_interval": 2})
    model, optimizer, changed = _steps(run, 5)
    layers = [{_layer(n) for n in step} for step in changed]
    assert layers == [{0}, {0}, {1}, {1}, {0}]  # ascending, switching every 2 steps, then round again
    assert all(len(step) == len(list(model.model.layers[0].parameters())) for step in changed)  # the whole layer
    # after step 5 the layer trained is 0 again, its moments fresh: state for its parameters and nothing else
    assert {id(p) for p in optimizer.state} == {id(p) for p in model.model.layers[0].parameters()}
    assert all(s["step"] == 1 for s in optimizer.state.values())  # moments restart on every visit
    assert [p.requires_grad for p in model.model.layers[1].parameters()] == [False] * 9


def test_badam_switch_orders():
    assert [block_order(4, r, "ascending", 1, 0) for r in range(5)] == [1, 2, 3, 0, 1]
    assert [block_order(4, r, "descending", 3, 0) for r in range(5)] == [3, 2, 1, 0, 3]
    assert [block_order(4, r, "fixed", 2, 0) for r in range(3)] == [2, 2, 2]
    cycle = [block_order(4, r, "random", 0, 7) for r in range(8)]
    assert sorted(cycle[:4]) == sorted(cycle[4:]) == [0, 1, 2, 3]  # each cycle visits every block once
    assert cycle == [block_order(4, r, "random", 0, 7) for r in range(8)]  # the same on every rank


def test_badam_ratio_mode_steps_a_share_of_each_weight_and_keeps_moments_for_it(tiny_model, workdir):
    run = _run(tiny_model, workdir, {"method": "badam", "mode": "ratio", "update_ratio": 0.1, "switch_interval": 2})
    model, optimizer, changed = _steps(run, 3)
    assert not any("embed_tokens" in n for step in changed for n in step)  # the embeddings stay, as LLaMA-Factory's
    weight = model.model.layers[0].self_attn.q_proj.weight
    k = round(0.1 * weight.numel())
    assert optimizer.state[weight]["m"].numel() == k  # moments for the chosen entries only
    index = optimizer.index[weight]
    assert torch.equal(index, torch.arange(int(index[0]), int(index[0]) + k))  # adjacent: one run of entries
    before = weight.detach().clone()
    loss, _ = compute_causal_lm_loss(model, _batch(load_tokenizer(run.model)))
    loss.backward()
    optimizer.step()
    moved = (weight.detach() != before).view(-1).nonzero().view(-1)
    assert 0 < len(moved) <= k and set(moved.tolist()) <= set(index.tolist())
    state = sum(s["m"].numel() + s["v"].numel() for s in optimizer.state.values())
    weights = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert state < 0.11 * 2 * weights  # AdamW keeps 2 x the weights


def test_badam_through_a_deepspeed_engine_and_its_checkpoint(tiny_model, tmp_path):
    run = _run(tiny_model, tmp_path, {"method": "badam", "switch_interval": 2})
    trained, engine = sft_engine_and_steps(run, 3)
    assert trained.optimizer.active_block == 1  # mid-way through the second block's round
    trained.save_checkpoint(str(tmp_path / "ckpt"), tag="t")
    restored = engine()
    assert restored.optimizer.active_block == 0
    restored.load_checkpoint(str(tmp_path / "ckpt"), tag="t")
    assert restored.optimizer.active_block == 1 and restored.optimizer.steps == 3
    assert [p.requires_grad for p in restored.module.model.layers[1].parameters()] == [True] * 9
    for p, q in zip(trained.optimizer.state, restored.optimizer.state):
        assert torch.equal(trained.optimizer.state[p]["exp_avg"], restored.optimizer.state[q]["exp_avg"])
    for a, b in zip(trained.module.parameters(), restored.module.parameters()):
        assert torch.equal(a, b)


def test_badam_rules_and_llamafactorys_keys():
    run = {"model": {"name_or_path": "m"}, "data": {"train": [{"path": "d", "format": "alpaca"}]}}
    with pytest.raises(ConfigError) as e:
        from rayft_core.config import validate_config

        validate_config({**run, "tuning": {"method": "badam"}, "model": {"name_or_path": "m", "dtype": "bfloat16"}})
    assert "model.dtype" in str(e.value)
    with pytest.raises(ConfigError, match="deepspeed.zero_stage: BAdam"):
        validate_config({**run, "tuning": "badam", "cluster": {"num_workers": 2}})  # 2 workers default to ZeRO-2
    lf = {
        **LF_MINIMAL,
        "finetuning_type": "full",
        "use_badam": True,
        "badam_mode": "ratio",
        "badam_update_ratio": 0.02,
        "badam_switch_interval": 10,
        "badam_mask_mode": "scatter",
        "badam_verbose": 2,
        "deepspeed": "examples/deepspeed/ds_z3_config.json",
    }
    out, notes = translate(lf)
    assert out["tuning"] == {
        "method": "badam",
        "mode": "ratio",
        "switch_interval": 10,
        "update_ratio": 0.02,
        "mask": "scatter",
    }
    assert out["deepspeed"] == {"zero_stage": 0}
    assert any(n.startswith("warning: badam_verbose") for n in notes) and any("deepspeed" in n for n in notes)
    _, notes = translate({**LF_MINIMAL, "use_badam": True})  # LoRA: LLaMA-Factory refuses it too
    assert any("use_badam" in n and "finetuning_type full" in n for n in notes)
