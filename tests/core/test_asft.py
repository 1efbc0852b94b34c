"""train.token_loss: asft against its formula written out on full logits (value and gradient), the anchor of an
adapter run (the base with the adapter off), and LLaMA-Factory's use_asft_loss keys."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rayft_core.data import IGNORE_INDEX
from rayft_core.llamafactory import translate
from rayft_core.model.checks import _sft_batch
from rayft_core.model.loader import load_model, load_tokenizer
from rayft_core.train.stages import STAGES
from tests.helpers import LF_MINIMAL, unit_run


def _asft_by_hand(policy_logits, ref_logits, labels, alpha):
    """LLaMA-Factory's asft_loss_func, summed instead of averaged: DFT (ce x sg(p)) + alpha KL(q || p)."""
    logits, ref, labels = policy_logits[:, :-1].float(), ref_logits[:, :-1].float(), labels[:, 1:]
    keep = labels != IGNORE_INDEX
    ce = F.cross_entropy(logits[keep], labels[keep], reduction="none")
    kl = F.kl_div(F.log_softmax(logits[keep], -1), F.softmax(ref[keep], -1), reduction="none").sum(-1)
    return (ce * torch.exp(-ce).detach()).sum() + alpha * kl.sum(), kl.sum(), int(keep.sum())


def _setup(tiny_model, workdir, tuning):
    run = unit_run(tiny_model("llama"), workdir, tuning, train={"token_loss": "asft", "asft_alpha": 0.3})
    stage, tok = STAGES["sft"], load_tokenizer(run.model)
    torch.manual_seed(0)
    model = stage.build_model(run, tok)
    return run, stage, tok, model, stage.objective(run, tok, torch.device("cpu"), {}), _sft_batch(stage, tok, run)


def test_asft_equals_dft_plus_the_kl_to_a_frozen_copy_of_the_base_in_value_and_gradient(tiny_model, workdir):
    run, stage, tok, model, objective, batch = _setup(tiny_model, workdir, {"method": "full"})
    with torch.no_grad():  # the policy moves away from the base, so the KL term is not zero
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    total, metrics = objective(model, batch)
    total.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    base = load_model(run, tok).eval()
    with torch.no_grad():
        ref_logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    want, kl, n = _asft_by_hand(logits, ref_logits, batch["labels"], 0.3)
    want.backward()
    assert kl > 0.01 and metrics["loss"][1] == n
    assert torch.allclose(total, want, rtol=1e-5) and abs(metrics["asft_kl"][0] - kl.item()) < 1e-3
    for name, p in model.named_parameters():
        assert torch.allclose(ours[name], p.grad, atol=1e-6, rtol=1e-4), name


def test_an_adapter_runs_anchor_is_its_base_with_the_adapter_off(tiny_model, workdir):
    """LoRA starts as the base (B = 0): the KL is zero and ASFT is DFT; once the adapter moves, it is not."""
    _, _, _, model, objective, batch = _setup(tiny_model, workdir, {"method": "lora", "rank": 4})
    total, metrics = objective(model, batch)
    assert metrics["asft_kl"][0] < 1e-6 and total > 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.5)
    _, metrics = objective(model, batch)
    assert metrics["asft_kl"][0] > 1e-3


def test_asft_rules_and_llamafactorys_keys():
    from rayft_core.config import validate_config
    from rayft_core.schema import ConfigError

    out, notes = translate({**LF_MINIMAL, "stage": "sft", "use_asft_loss": True, "asft_alpha": 0.05})
    assert out["train"]["token_loss"] == "asft" and out["train"]["asft_alpha"] == 0.05 and not notes
    _, notes = translate({**LF_MINIMAL, "stage": "sft", "use_asft_loss": True, "use_dft_loss": True})
    assert any(n.startswith("error: use_asft_loss") for n in notes)
    _, notes = translate({**LF_MINIMAL, "stage": "sft", "asft_alpha": 0.5})
    assert any("asft_alpha" in n and "applies with use_asft_loss only" in n for n in notes)
    run = {"model": {"name_or_path": "m"}, "data": {"train": [{"path": "d", "format": "text"}]}}
    with pytest.raises(ConfigError, match="train.token_loss: asft is a loss of stage sft"):
        validate_config({**run, "stage": "pt", "train": {"token_loss": "asft"}})
