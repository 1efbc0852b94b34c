"""QLoRA: adapters on a bitsandbytes-quantized base train and the base stays as quantized, gradients equal those of
the dequantized base (also after an evaluation), and LoftQ starts the adapter at what quantization lost."""

from __future__ import annotations

import pytest
import torch

from rayft_core.config import validate_config
from rayft_core.model.adapters import apply_tuning
from rayft_core.model.loader import load_model, load_tokenizer
from rayft_core.train.losses import compute_causal_lm_loss as compute_loss
from rayft_core.train.optim import build_optimizer
from tests.core.test_tuning import MINIMAL, _batch, _cfg


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_adapters_on_a_quantized_base(tiny_model, workdir, bits):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    run = _cfg(
        tiny_model, workdir, {"method": "lora", "rank": 4, "quantization_bit": bits}, deepspeed={"zero_stage": 0}
    )
    tokenizer = load_tokenizer(run.model)
    model = apply_tuning(load_model(run, tokenizer), run)
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt)]
    assert quantized
    # bitsandbytes repacks quantized storage on CPU at the first forward, so the frozen base is
    # compared by what it computes, not by its bytes.
    probes = [torch.randn(3, m.in_features) for m in quantized]
    with torch.no_grad():
        base_out = [m(x).clone() for m, x in zip(quantized, probes)]
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = build_optimizer(model, run)
    batch = _batch(tokenizer)
    losses = []
    for _ in range(3):
        loss, _ = compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert lora and all("lora_" in n for n in lora)
    assert all(not torch.equal(p, dict(model.named_parameters())[n]) for n, p in lora.items())
    with torch.no_grad():
        assert all(torch.allclose(m(x), out) for m, x, out in zip(quantized, probes, base_out))


def test_qlora_gradients_equal_those_of_the_dequantized_base(tiny_model, workdir):
    """bitsandbytes warns that its CPU 4-bit kernel has no autograd kernel; check the gradients
    that reach the first layer's adapter through every quantized layer against a float twin."""
    bnb = pytest.importorskip("bitsandbytes")
    lora = {"method": "lora", "rank": 4, "init": "gaussian"}
    q_run = _cfg(tiny_model, workdir, {**lora, "quantization_bit": 4}, deepspeed={"zero_stage": 0})
    f_run = _cfg(tiny_model, workdir, lora, deepspeed={"zero_stage": 0})
    tokenizer = load_tokenizer(q_run.model)
    quantized = apply_tuning(load_model(q_run, tokenizer), q_run)
    twin = apply_tuning(load_model(f_run, tokenizer), f_run)
    twin_params = dict(twin.named_parameters())
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                twin_params[name + ".weight"].copy_(
                    bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
                )
        for name, p in quantized.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)  # B = 0 at init would make every A gradient zero
            if p.requires_grad:
                twin_params[name].copy_(p)
    batch = _batch(tokenizer)
    for model in (quantized, twin):
        compute_loss(model, batch)[0].backward()
    name = next(n for n, p in quantized.named_parameters() if p.requires_grad and "layers.0." in n and "lora_A" in n)
    grad, ref = dict(quantized.named_parameters())[name].grad, twin_params[name].grad
    assert ref.abs().sum() > 0
    assert torch.allclose(grad, ref, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("bits", [4, 8])
def test_loftq_starts_a_qlora_adapter_closer_to_the_full_precision_model(tiny_model, workdir, bits):
    """LoftQ: base + adapter at step 0 is nearer the unquantized weights than QLoRA's quantized base alone (whose
    adapter starts at zero), layer by layer and in the model's logits."""
    pytest.importorskip("bitsandbytes")
    from rayft_core.methods.loftq import dequantized_weight

    def tuned(init):
        run = _cfg(tiny_model, workdir, {"method": "lora", "rank": 4, "quantization_bit": bits, "init": init})
        torch.manual_seed(0)
        return apply_tuning(load_model(run, load_tokenizer(run.model)), run).eval()

    full_run = _cfg(tiny_model, workdir, {"method": "full"}, model={"dtype": "float32"})
    full = load_model(full_run, load_tokenizer(full_run.model)).eval()
    qlora, loftq = tuned("default"), tuned("loftq")
    weights = dict(full.named_parameters())
    layers = [(n, m) for n, m in loftq.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert len(layers) == 14  # every linear layer of the 2 decoder blocks
    for name, layer in layers:
        w = weights[name.removeprefix("base_model.model.") + ".weight"]
        q = dequantized_weight(layer.get_base_layer())
        start = q + layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        error, left = (w - start).norm(), torch.linalg.svdvals(w - q)[4:].square().sum().sqrt()
        assert error < (w - q).norm() and torch.isclose(error, left, rtol=1e-3), name  # all but the best rank 4
    ids = torch.randint(3, 200, (2, 16))
    with torch.no_grad():
        want = full(input_ids=ids).logits
        assert (loftq(input_ids=ids).logits - want).norm() < (qlora(input_ids=ids).logits - want).norm()
    from rayft_core.schema import ConfigError

    with pytest.raises(ConfigError, match="tuning.init: loftq starts the adapter at what quantizing"):
        validate_config({**MINIMAL, "tuning": {"method": "lora", "init": "loftq"}})
    with pytest.raises(ConfigError, match="for QLoRA use init: loftq"):  # PEFT would raise a TypeError in a worker
        validate_config({**MINIMAL, "tuning": {"method": "lora", "init": "pissa", "quantization_bit": 4}})


def test_qlora_gradients_stay_right_after_an_evaluation(tiny_model, workdir):
    """An eval-mode forward without gradients (rayft's evaluation) makes bitsandbytes repack 4-bit weights for its
    AVX-512 CPU kernel, whose backward is wrong (100% off on this machine's CPU); rayft keeps the trainable layout.
    On a CPU without AVX-512 BF16 both layouts are the same and this holds trivially."""
    pytest.importorskip("bitsandbytes")
    run = _cfg(tiny_model, workdir, {"method": "lora", "rank": 4, "quantization_bit": 4}, deepspeed={"zero_stage": 0})
    tokenizer = load_tokenizer(run.model)
    model = apply_tuning(load_model(run, tokenizer), run)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    batch = _batch(tokenizer)

    def gradients():
        model.train()
        model.zero_grad()
        compute_loss(model, batch)[0].backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    before = gradients()
    model.eval()
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    after = gradients()
    assert before and all(torch.allclose(before[n], after[n], atol=1e-6) for n in before)
