"""train.optimizer: Muon's update of a hidden matrix against the published algorithm by hand, AdamW on the rest, one
schedule for both; Adam-mini's blocks and its update by hand; bitsandbytes' 8-bit AdamW under ZeRO; their rules,
LLaMA-Factory's keys, and a real DeepSpeed engine that trains with each and restores it from a checkpoint."""

from __future__ import annotations

import math
import re

import pytest
import torch

from rayft_core.config import validate_config
from rayft_core.schema import ConfigError
from tests.helpers import sft_engine_and_steps

MINIMAL = {"model": {"name_or_path": "m"}, "data": {"train": [{"path": "d", "format": "alpaca"}]}}


def _newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Jordan et al.'s quintic iteration, written out in fp32: the orthogonalised matrix (singular values near
    one). PyTorch's runs in bfloat16, as the paper's does: they agree within bfloat16's precision."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm() + 1e-7)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def test_muon_orthogonalises_hidden_matrices_and_adamw_steps_the_rest():
    from rayft_core.train.muon import MuonWithAdamW, hidden_matrices

    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"embed_tokens": torch.nn.Embedding(10, 16), "proj": torch.nn.Linear(16, 32)})
    assert hidden_matrices(model) == {id(model["proj"].weight)}  # not the embeddings, not the bias
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
    lr = 1e-2
    groups = [{"params": list(model.parameters()), "lr": lr, "weight_decay": 0.0}]
    optimizer = MuonWithAdamW(groups, hidden_matrices(model), lr, betas=(0.9, 0.999), eps=1e-8)
    optimizer.step()
    after = dict(model.named_parameters())

    # Muon, first step: momentum B = g, Nesterov g + 0.95 B, orthogonalised, scaled to AdamW's RMS (0.2 sqrt(32))
    update = (before["proj.weight"] - after["proj.weight"].detach()) / (lr * 0.2 * math.sqrt(32))
    assert torch.allclose(update, _newton_schulz(grads["proj.weight"] * 1.95), atol=2e-2)
    singular = torch.linalg.svdvals(update)
    assert singular.min() > 0.6 and singular.max() < 1.25  # orthogonalised: every direction moves about alike
    raw = torch.linalg.svdvals(grads["proj.weight"])
    assert raw.max() / raw.min() > 2 * singular.max() / singular.min()  # the gradient's directions did not
    # AdamW's bias-corrected first step: lr * g / (|g| + eps), about lr * sign(g)
    for name in ("embed_tokens.weight", "proj.bias"):
        step = before[name] - after[name].detach()
        g = grads[name]
        assert torch.allclose(step, lr * g / (g.abs() + 1e-8), atol=1e-6), name


def test_one_schedule_drives_both_halves_and_the_state_round_trips():
    from rayft_core.train.muon import MuonWithAdamW, hidden_matrices

    model = torch.nn.Linear(8, 8)
    groups = [{"params": [model.weight], "lr": 1e-3, "weight_decay": 0.1}, {"params": [model.bias], "lr": 1e-3}]
    optimizer = MuonWithAdamW(groups, hidden_matrices(model), 1e-3, (0.9, 0.999), 1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    model.weight.grad, model.bias.grad = torch.ones(8, 8), torch.ones(8)
    optimizer.step()
    scheduler.step()
    assert [g["lr"] for o in optimizer.parts for g in o.param_groups] == [5e-4, 5e-4]  # Muon's and AdamW's
    assert optimizer.parts[0].param_groups[0]["weight_decay"] == 0.1  # the group's own decay, not Muon's 0.1 default
    again = MuonWithAdamW(groups, hidden_matrices(model), 1e-3, (0.9, 0.999), 1e-8)
    again.load_state_dict(optimizer.state_dict())
    buffer = again.parts[0].state[model.weight]["momentum_buffer"]
    assert torch.equal(buffer, optimizer.parts[0].state[model.weight]["momentum_buffer"])


def test_muon_rules_and_llamafactorys_use_muon():
    from rayft_core.llamafactory import translate

    cases = {
        "ZeRO-1/2/3 hand the optimizer flat partitions": {"deepspeed": {"zero_stage": 2}},
        "muon with 16-bit full-parameter training": {"tuning": "full", "model": {"name_or_path": "m", "dtype": "bfloat16"}},
        "tuning method galore steps with its own optimizer": {"tuning": "galore", "deepspeed": {"zero_stage": 0}},
    }  # fmt: skip
    for message, sections in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            validate_config({**MINIMAL, **sections, "train": {"optimizer": "muon"}})
    lora_bf16 = {"model": {"name_or_path": "m", "dtype": "bfloat16"}, "train": {"optimizer": "muon"}}
    assert validate_config({**MINIMAL, **lora_bf16}).train.optimizer == "muon"  # the adapter trains in fp32
    lf = {"model_name_or_path": "m", "stage": "sft", "dataset": "d"}
    raw, notes = translate({**lf, "use_muon": True})
    assert notes == [] and raw["train"]["optimizer"] == "muon"
    raw, notes = translate({**lf, "use_adam_mini": True, "use_muon": True})  # LLaMA-Factory builds Adam-mini first
    assert raw["train"]["optimizer"] == "adam_mini"
    assert notes == ["warning: use_muon: true -- LLaMA-Factory builds the optimizer of use_adam_mini first; no effect"]
    for optim, ours in (("adamw_bnb_8bit", "adamw_8bit"), ("paged_adamw_8bit", "paged_adamw_8bit")):
        raw, notes = translate({**lf, "optim": optim})
        assert notes == [] and raw["train"]["optimizer"] == ours
    _, notes = translate({**lf, "optim": "adamw_8bit", "finetuning_type": "full", "use_galore": True})
    assert notes == [
        'error: optim: "adamw_8bit" -- rayft'
        "'"
        "s galore steps with its AdamW; LLaMA-Factory would take adamw_8bit"
        "'"
        "s variant"
    ]


def test_adam_mini_keeps_one_second_moment_per_block_and_steps_by_hand(tiny_model):
    from transformers import AutoModelForCausalLM

    from rayft_core.train.adam_mini import AdamMini, block_sizes

    model = AutoModelForCausalLM.from_pretrained(tiny_model("qwen2"), dtype=torch.float32)  # q/k/v biases
    config, sizes = model.config, block_sizes(model)
    head_dim = config.hidden_size // config.num_attention_heads
    params = dict(model.named_parameters())
    layer = "model.layers.0."
    assert sizes[id(params["model.embed_tokens.weight"])] == config.hidden_size  # one per token
    assert sizes[id(params[layer + "self_attn.q_proj.weight"])] == head_dim * config.hidden_size  # one per head
    assert sizes[id(params[layer + "self_attn.k_proj.weight"])] == head_dim * config.hidden_size
    assert sizes[id(params[layer + "mlp.down_proj.weight"])] == config.intermediate_size  # one per output neuron
    assert sizes[id(params[layer + "input_layernorm.weight"])] == config.hidden_size  # one per tensor
    assert sizes[id(params[layer + "self_attn.q_proj.bias"])] == 1  # Adam's own

    torch.manual_seed(0)
    before = {n: p.detach().clone() for n, p in params.items()}
    grads = {n: torch.randn_like(p) for n, p in params.items()}
    for n, p in params.items():
        p.grad = grads[n].clone()
    lr = 1e-3
    optimizer = AdamMini([{"params": list(params.values()), "lr": lr}], sizes, lr, (0.9, 0.999), 1e-8)
    optimizer.step()
    # first step: m = (1 - b1) g, v = (1 - b2) mean(g^2) over the block: the update is lr g / rms(g) of its block
    for name in (layer + "self_attn.q_proj.weight", "model.embed_tokens.weight", layer + "input_layernorm.weight"):
        g = grads[name].reshape(-1, sizes[id(params[name])])
        want = before[name] - lr * (g / (g.square().mean(1, keepdim=True).sqrt() + 1e-8)).view_as(before[name])
        assert torch.allclose(params[name].detach(), want, atol=1e-6), name
    state = sum(t.numel() for s in optimizer.state.values() for t in (s["m"], s["v"]))
    weights = sum(p.numel() for p in params.values())
    assert state < 0.55 * 2 * weights  # AdamW keeps 2 x the weights; Adam-mini about half of that


@pytest.mark.parametrize("optimizer, zero", [("muon", 0), ("adam_mini", 0), ("adamw_8bit", 2)])
def test_a_deepspeed_engine_trains_and_restores_the_optimizer_from_a_checkpoint(tiny_model, tmp_path, optimizer, zero):
    from rayft_core.model.checks import _run

    sections = {"train": {"optimizer": optimizer}, "deepspeed": {"zero_stage": zero}}
    run = _run(tiny_model("llama"), tmp_path / "out", tuning={"method": "full"}, **sections)
    trained, engine = sft_engine_and_steps(run, 4)
    trained.save_checkpoint(str(tmp_path / "ckpt"), tag="t")
    restored = engine()
    restored.load_checkpoint(str(tmp_path / "ckpt"), tag="t")
    if optimizer == "muon":
        muon = [o for o in restored.optimizer.parts if isinstance(o, torch.optim.Muon)][0]
        buffers = [s["momentum_buffer"] for s in muon.state.values()]
    elif optimizer == "adam_mini":
        buffers = [s["v"] for s in restored.optimizer.state.values()]
    else:  # ZeRO-2 steps bitsandbytes over its flat fp32 partitions (one a group): the moments are 8-bit codes
        states = list(restored.optimizer.optimizer.state.values())
        # (bitsandbytes keeps fp32 moments for a tensor under 4096 entries: the partition of the norm scales)
        big = [s for s in states if s["state1"].numel() >= 4096]
        assert big and all(s["state1"].dtype == s["state2"].dtype == torch.uint8 for s in big)
        buffers = [s["state1"].float() for s in states]
    assert buffers and all(b.abs().sum() > 0 for b in buffers)  # the optimizer's state came back
    for a, b in zip(trained.module.parameters(), restored.module.parameters()):
        assert torch.equal(a, b)
