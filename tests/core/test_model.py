import json

import pytest
import torch

from rayft_core.model.adapters import apply_tuning
from rayft_core.model.loader import (
    build_model_config,
    load_model,
    load_tokenizer,
    resolve_attn_implementation,
    resolve_dtype,
)
from rayft_core.schema import ConfigError
from rayft_core.train.deepspeed_config import build_deepspeed_config
from tests.helpers import run_config


def _run(tiny_model, workdir, **sections):
    return run_config(tiny_model("llama"), [{"path": "x.json", "format": "alpaca"}], workdir, "unit", **sections)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU choices")
def test_hardware_defaults_on_cpu():
    assert resolve_dtype("auto") == torch.float32
    assert resolve_dtype("bfloat16") == torch.bfloat16
    assert resolve_attn_implementation("auto") == "sdpa"
    assert resolve_attn_implementation("eager") == "eager"
    from transformers import BloomConfig, LlamaConfig

    assert resolve_attn_implementation("auto", LlamaConfig()) == "sdpa"
    assert resolve_attn_implementation("auto", BloomConfig()) == "eager"  # Bloom has no SDPA attention


def test_rope_scaling_factor_follows_max_seq_len(tiny_model, workdir):
    run = _run(tiny_model, workdir, model={"name_or_path": str(tiny_model("llama")), "rope_scaling": "linear"})
    run.data.max_seq_len = 2048
    config = build_model_config(run)  # the tiny model has max_position_embeddings 512
    assert config.rope_parameters["rope_type"] == "linear" and config.rope_parameters["factor"] == 4.0
    assert config.max_position_embeddings == 2048
    unscaled = build_model_config(
        _run(tiny_model, workdir, model={"name_or_path": str(tiny_model("llama")), "rope_scaling": "linear"})
    )
    assert unscaled.rope_parameters.get("rope_type") == "default"  # 64 <= 512: nothing to scale


def test_added_special_tokens_get_noisy_mean_embeddings(tiny_model, workdir):
    run = _run(
        tiny_model,
        workdir,
        model={"name_or_path": str(tiny_model("llama")), "add_special_tokens": ["<tool_call>", "</tool_call>"]},
    )
    tokenizer = load_tokenizer(run.model)
    model = load_model(run, tokenizer)
    weight = model.get_input_embeddings().weight
    old = weight.shape[0] - 2
    assert weight.shape[0] == len(tokenizer)
    new = weight[old:]
    mean = weight[:old].mean(0)
    assert not torch.equal(new[0], new[1])  # noise keeps them apart
    assert (new - mean).norm(dim=1).max() < (weight[:old] - mean).norm(dim=1).mean()  # near the mean
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)
    lora = apply_tuning(model, run)  # with LoRA, the resized embeddings and head train and are saved in full
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert any("embed_tokens.modules_to_save" in n for n in trainable)
    assert any("lm_head.modules_to_save" in n for n in trainable)


def test_added_ordinary_tokens_are_kept_whole_not_special_and_train_their_rows(tiny_model, workdir):
    """model.add_tokens (LLaMA-Factory's add_tokens): words the tokenizer then keeps as one token, not special (a
    decode that skips special tokens keeps them); the embeddings grow and, under LoRA, train."""
    from rayft_core.llamafactory import translate

    model_cfg = {"name_or_path": str(tiny_model("llama")), "add_tokens": ["rayftium", "zyxqua"]}
    run = _run(tiny_model, workdir, model=model_cfg)
    plain = load_tokenizer(_run(tiny_model, workdir, model={"name_or_path": str(tiny_model("llama"))}).model)
    tokenizer = load_tokenizer(run.model)
    assert len(plain("rayftium")["input_ids"]) > 1  # split before
    ids = tokenizer("rayftium", add_special_tokens=False)["input_ids"]
    assert ids == [tokenizer.convert_tokens_to_ids("rayftium")] and len(tokenizer) == len(plain) + 2
    assert "rayftium" in tokenizer.decode(ids, skip_special_tokens=True)
    model = load_model(run, tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    lora = apply_tuning(model, run)
    assert any("embed_tokens.modules_to_save" in n for n, p in lora.named_parameters() if p.requires_grad)
    raw, notes = translate(
        {"model_name_or_path": "m", "dataset": "d", "add_tokens": "rayftium, zyxqua", "resize_vocab": True}
    )
    assert raw["model"]["add_tokens"] == ["rayftium", "zyxqua"]
    assert notes == [
        "warning: resize_vocab: true -- rayft grows the embeddings to the tokenizer exactly; LLaMA-Factory pads them "
        "to a multiple of 64"
    ]


def test_adapters_stay_fp32_on_a_16_bit_base(tiny_model, workdir):
    run = _run(
        tiny_model,
        workdir,
        model={"name_or_path": str(tiny_model("llama")), "dtype": "bfloat16", "gradient_checkpointing": True},
    )
    model = apply_tuning(load_model(run, load_tokenizer(run.model)), run)
    dtypes = {(p.requires_grad, p.dtype) for p in model.parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}
    assert model.base_model.model.is_gradient_checkpointing
    ds = build_deepspeed_config(run, torch.bfloat16, world_size=2)
    assert ds["bf16"]["enabled"] is False  # DeepSpeed must not cast the fp32 adapters down


def test_offload_to_nvme_and_the_zero3_gathering_knobs_reach_deepspeed(tiny_model, workdir):
    ds = {"zero_stage": 3, "offload_optimizer": True, "offload_params": True, "offload_nvme_path": "/local_nvme"}
    run = _run(tiny_model, workdir, deepspeed={**ds, "max_live_parameters": 10**8, "prefetch_bucket_size": 10**7})
    zero = build_deepspeed_config(run, torch.float32, world_size=2)["zero_optimization"]
    for key in ("offload_optimizer", "offload_param"):
        assert zero[key] == {"device": "nvme", "nvme_path": "/local_nvme", "pin_memory": True}
    assert zero["stage3_max_live_parameters"] == 10**8 and zero["stage3_prefetch_bucket_size"] == 10**7


def test_user_deepspeed_json_gets_its_auto_values_filled(tiny_model, workdir, tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "zero_optimization": {"stage": 3, "overlap_comm": True, "reduce_bucket_size": "auto"},
            }
        )
    )
    run = _run(
        tiny_model,
        workdir,
        deepspeed={"zero_stage": 3, "config_file": str(path)},
        train={"micro_batch_size": 3, "gradient_accumulation_steps": 5, "max_steps": 1},
    )
    ds = build_deepspeed_config(run, torch.float32, world_size=2)
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 5
    assert ds["zero_optimization"] == {"stage": 3, "overlap_comm": True, "reduce_bucket_size": 5e7}


def test_remote_code_is_off_unless_asked(tiny_model, workdir):
    assert _run(tiny_model, workdir).model.trust_remote_code is False


def test_neftune_noise_is_bounded_by_alpha_over_sqrt_length_times_width_and_only_in_training(tiny_model, workdir):
    """NEFTune: in training the input embeddings move by uniform noise in [-a, a], a = alpha / sqrt(L * d), and
    the noise fills that range; in eval mode (evaluation, generation, references) they are untouched."""
    plain = _run(tiny_model, workdir)
    noisy = _run(tiny_model, workdir, train={"neftune_noise_alpha": 5.0})
    tokenizer = load_tokenizer(plain.model)
    base, model = load_model(plain, tokenizer), load_model(noisy, tokenizer)
    ids = torch.randint(0, len(tokenizer), (4, 32))
    clean = base.get_input_embeddings()(ids)
    d = clean.shape[-1]
    bound = 5.0 / (32 * d) ** 0.5
    model.train()
    noise = model.get_input_embeddings()(ids) - clean
    assert noise.abs().max() <= bound + 1e-6 and noise.abs().max() > 0.95 * bound  # uniform over the full range
    assert abs(noise.mean().item()) < bound / 10  # centred
    model.eval()
    assert torch.equal(model.get_input_embeddings()(ids), clean)
    assert model(input_ids=ids).logits.allclose(base.eval()(input_ids=ids).logits)


def test_from_scratch_draws_random_weights_of_the_architecture_the_same_on_every_worker(tiny_model, workdir):
    run = _run(tiny_model, workdir, model={"name_or_path": str(tiny_model("llama")), "from_scratch": True})
    tokenizer = load_tokenizer(run.model)
    trained = load_model(_run(tiny_model, workdir), tokenizer).state_dict()
    first, second = load_model(run, tokenizer).state_dict(), load_model(run, tokenizer).state_dict()
    assert first.keys() == trained.keys() and all(first[k].shape == trained[k].shape for k in first)
    assert not torch.equal(first["model.layers.0.mlp.up_proj.weight"], trained["model.layers.0.mlp.up_proj.weight"])
    assert all(torch.equal(first[k], second[k]) for k in first)  # seeded by train.seed


def test_upcast_layernorm_keeps_norm_weights_in_float32_and_their_outputs_in_the_models_dtype(tiny_model, workdir):
    model_section = {"name_or_path": str(tiny_model("llama")), "dtype": "bfloat16", "upcast_layernorm": True}
    run = _run(tiny_model, workdir, model=model_section)
    model = load_model(run, load_tokenizer(run.model))
    norms = {n: p.dtype for n, p in model.named_parameters() if "norm" in n}
    assert norms and set(norms.values()) == {torch.float32}
    assert {p.dtype for n, p in model.named_parameters() if n not in norms} == {torch.bfloat16}
    ids = torch.randint(0, 100, (2, 8))
    assert model(input_ids=ids).logits.dtype == torch.bfloat16  # every layer after a norm still runs in bf16
    with pytest.raises(ConfigError, match="model.upcast_layernorm: only with LoRA"):
        _run(tiny_model, workdir, model=model_section, tuning={"method": "full"})


def test_train_modules_train_in_full_beside_the_adapters_and_unknown_names_are_refused(tiny_model, workdir):
    from rayft_core.methods.layers import TuningError
    from rayft_core.model.adapters import apply_tuning

    modules = ["lm_head", "norm", "input_layernorm"]
    run = _run(tiny_model, workdir, tuning={"method": "lora", "rank": 4, "train_modules": modules})
    model = apply_tuning(load_model(run, load_tokenizer(run.model)), run)
    trained = {
        n.split(".modules_to_save")[0] for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n
    }
    # a name matches a module's whole dotted path or its end after a dot: `norm` is the final norm alone (not
    # post_attention_layernorm), `input_layernorm` every layer's
    assert trained == {"base_model.model.lm_head"} | {
        f"base_model.model.model.{n}" for n in ["norm", "layers.0.input_layernorm", "layers.1.input_layernorm"]
    }
    bad = _run(tiny_model, workdir, tuning={"method": "lora", "train_modules": ["layernorm"]})
    with pytest.raises(TuningError, match="tuning.train_modules: the model has no module named layernorm"):
        apply_tuning(load_model(bad, load_tokenizer(bad.model)), bad)


def test_liger_kernels_are_a_gpu_choice_said_to_have_no_effect_on_cpu(tiny_model, workdir, caplog):
    """model.liger_kernel (LLaMA-Factory's enable_liger_kernel): Triton kernels, applied where CUDA runs the model.
    Here, without a GPU, the log says so and the model computes what it did."""
    import logging

    from rayft_core.llamafactory import translate
    from rayft_core.model.loader import load_model, load_tokenizer
    from tests.helpers import LF_MINIMAL, run_config

    out, notes = translate({**LF_MINIMAL, "enable_liger_kernel": True})
    assert out["model"]["liger_kernel"] is True and not [n for n in notes if "liger" in n]
    run = run_config(
        tiny_model("llama"), [{"path": "d.json", "format": "alpaca"}], workdir, "u", model={"liger_kernel": True}
    )
    plain = run.model_copy(update={"model": run.model.model_copy(update={"liger_kernel": False})})
    tok = load_tokenizer(run.model)
    with caplog.at_level(logging.WARNING, logger="rayft_core.model.kernels"):
        model = load_model(run, tok)
    assert "Liger's kernels are Triton GPU kernels; on CPU they are not applied" in caplog.text
    ids = torch.randint(3, 200, (1, 12))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, load_model(plain, tok)(input_ids=ids).logits)
