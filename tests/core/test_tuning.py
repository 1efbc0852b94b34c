"""Each tuning method trains exactly the parameters it should: they change, the rest do not."""

from __future__ import annotations

import re

import pytest
import torch

from rayft_core.config import validate_config
from rayft_core.data.collate import pad_batch
from rayft_core.data.tokenize import encode_chat_batch
from rayft_core.model.adapters import TuningError, apply_tuning
from rayft_core.model.loader import load_model, load_tokenizer
from rayft_core.train.losses import compute_causal_lm_loss as compute_loss
from rayft_core.train.optim import build_optimizer
from tests.helpers import QA, run_config


def _batch(tokenizer):
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA]
    enc = encode_chat_batch(tokenizer, convs, 64)
    return pad_batch(enc, tokenizer.pad_token_id)


def _train(run, steps: int = 3):
    """Build the model as a worker does, take a few optimizer steps; return (model, before, after, optimizer)."""
    tokenizer = load_tokenizer(run.model)
    model = apply_tuning(load_model(run, tokenizer), run)
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, run)
    batch = _batch(tokenizer)
    losses = []
    for _ in range(steps):
        loss, _ = compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    after = {n: p.detach().float() for n, p in model.named_parameters()}
    return model, before, after, optimizer


def _changed(before, after) -> set[str]:
    return {n for n in before if not torch.equal(before[n], after[n])}


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _cfg(tiny_model, workdir, tuning, arch="llama", **sections):
    return run_config(
        tiny_model(arch), [{"path": "unused.json", "format": "alpaca"}], workdir, "unit", tuning=tuning, **sections
    )


def test_full_trains_everything(tiny_model, workdir):
    model, before, after, _ = _train(_cfg(tiny_model, workdir, {"method": "full"}))
    assert _trainable(model) == set(before) == _changed(before, after)


def test_freeze_trains_the_last_layers_and_named_modules_only(tiny_model, workdir):
    model, before, after, _ = _train(
        _cfg(tiny_model, workdir, {"method": "freeze", "trainable_layers": 1, "trainable_modules": ["lm_head"]})
    )
    expected = {n for n in before if n.startswith("model.layers.1.") or n.startswith("lm_head")}
    assert _trainable(model) == expected
    assert _changed(before, after) == expected


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_llama_pro_expansion_starts_as_the_original_trains_only_new_blocks_and_reloads(
    tiny_model, workdir, tmp_path, arch
):
    """LLaMA Pro: 2 blocks become 4, each copy after its original with o_proj and down_proj at zero: the logits are
    the original's; only the copies train; the saved model loads in plain transformers with 4 layers, and a freeze
    run with spread (LLaMA-Factory's use_llama_pro) on it picks the same blocks."""
    from transformers import AutoModelForCausalLM

    from rayft_core.train.outputs import save_model

    run = _cfg(tiny_model, workdir, {"method": "freeze", "expand_layers": 2}, arch=arch)
    tokenizer = load_tokenizer(run.model)
    ids = _batch(tokenizer)["input_ids"]
    original = AutoModelForCausalLM.from_pretrained(tiny_model(arch), dtype=torch.float32)
    expanded = apply_tuning(load_model(run, tokenizer), run)
    with torch.no_grad():
        assert torch.allclose(expanded(input_ids=ids).logits, original(input_ids=ids).logits, atol=1e-5)
    assert expanded.config.num_hidden_layers == 4
    assert _trainable(expanded) == {
        n for n, _ in expanded.named_parameters() if n.startswith(("model.layers.1.", "model.layers.3."))
    }

    model, before, after, _ = _train(run)
    assert _changed(before, after) == _trainable(model)  # the copies moved, nothing else
    save_model(model, tokenizer, run, tmp_path / "run")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run", dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    spread = _cfg(tiny_model, workdir, {"method": "freeze", "trainable_layers": 2, "spread": True})
    spread.model.name_or_path = str(tmp_path / "run")
    assert _trainable(apply_tuning(load_model(spread, tokenizer), spread)) == _trainable(model)


def test_llama_pro_rules_and_llamafactorys_use_llama_pro():
    from rayft_core.llamafactory import translate
    from rayft_core.schema import ConfigError

    minimal = {"model": {"name_or_path": "m"}, "data": {"train": [{"path": "d", "format": "alpaca"}]}}
    for tuning, message in (
        ({"method": "freeze", "expand_layers": 2, "trainable_layers": 1}, "drop trainable_layers and spread"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            validate_config({**minimal, "tuning": tuning})
    with pytest.raises(ConfigError, match="copied before ZeRO-3 partitions them"):
        validate_config({**minimal, "tuning": {"method": "freeze", "expand_layers": 2}, "deepspeed": {"zero_stage": 3}})
    lf = {"model_name_or_path": "m", "stage": "sft", "dataset": "d", "use_llama_pro": True}
    raw, notes = translate({**lf, "finetuning_type": "freeze", "freeze_trainable_layers": 8})
    assert notes == [] and raw["tuning"] == {"method": "freeze", "trainable_layers": 8, "spread": True}
    _, notes = translate({**lf, "finetuning_type": "lora"})
    assert notes == [
        "error: use_llama_pro: true -- rayft's LLaMA Pro is freeze tuning (tuning.spread, tuning.expand_layers)"
    ]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma2", "phi3"])
def test_lora_trains_adapters_only_on_every_architecture(tiny_model, workdir, arch):
    model, before, after, _ = _train(_cfg(tiny_model, workdir, {"method": "lora", "rank": 4}, arch=arch))
    trainable = _trainable(model)
    assert trainable and all("lora_" in n for n in trainable)
    # B starts at zero, so A's gradient is zero at step 1; after 3 steps every adapter matrix moved
    assert _changed(before, after) == trainable
    targeted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert "lm_head" not in targeted and len(targeted) >= 4  # 'all' = every linear but the head


def test_lora_variants(tiny_model, workdir):
    rs = _cfg(tiny_model, workdir, {"method": "lora", "rank": 4, "alpha": 8, "use_rslora": True})
    model = apply_tuning(load_model(rs, load_tokenizer(rs.model)), rs)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(8 / 4**0.5)  # rsLoRA: alpha / sqrt(r)

    model, before, after, _ = _train(_cfg(tiny_model, workdir, {"method": "lora", "rank": 4, "use_dora": True}))
    assert any("lora_magnitude_vector" in n for n in _trainable(model))
    assert _changed(before, after) == _trainable(model)


def test_pissa_moves_principal_components_into_the_adapter(tiny_model, workdir):
    run = _cfg(tiny_model, workdir, {"method": "lora", "rank": 4, "init": "pissa"})
    tokenizer = load_tokenizer(run.model)
    base = load_model(run, tokenizer)
    batch = _batch(tokenizer)
    with torch.no_grad():
        ref = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        w0 = base.model.layers[0].self_attn.q_proj.weight.clone()
    model = apply_tuning(base, run)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert not torch.allclose(layer.base_layer.weight, w0)  # residual weight = W - principal part
    assert layer.lora_B["default"].weight.abs().sum() > 0  # B is not zero-initialised
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(out, ref, atol=1e-4)  # the model's function is unchanged at init


def test_loraplus_gives_b_matrices_a_higher_learning_rate(tiny_model, workdir):
    run = _cfg(tiny_model, workdir, {"method": "lora", "rank": 4, "loraplus_lr_ratio": 16})
    model = apply_tuning(load_model(run, load_tokenizer(run.model)), run)
    optimizer = build_optimizer(model, run)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        kinds = {"B" if "lora_B" in names[id(p)] else "A" for p in group["params"]}
        assert len(kinds) == 1
        assert group["lr"] == pytest.approx(run.train.learning_rate * (16 if kinds == {"B"} else 1))


def test_galore_projects_linear_weights_and_trains_everything(tiny_model, workdir):
    pytest.importorskip("galore_torch")
    run = _cfg(tiny_model, workdir, {"method": "galore", "rank": 4, "update_proj_gap": 2}, deepspeed={"zero_stage": 0})
    model, before, after, optimizer = _train(run)
    assert type(optimizer).__module__.startswith("galore_torch")
    projected = [g for g in optimizer.param_groups if "rank" in g]
    assert projected and all(p.ndim == 2 for p in projected[0]["params"])
    assert _changed(before, after) == set(before)


def test_apollo_keeps_rank_r_moments_of_projected_weights_and_trains_everything(tiny_model, workdir):
    """APOLLO: AdamW's moments of each targeted matrix are those of its rank-r projection (r x the long side, not the
    matrix), the update is the raw gradient scaled per channel; every parameter trains and the loss falls."""
    pytest.importorskip("apollo_torch")
    apollo = {"method": "apollo", "rank": 4, "update_proj_gap": 2}  # LLaMA-Factory's scale 32: sqrt(32) x the lr
    run = _cfg(tiny_model, workdir, apollo, deepspeed={"zero_stage": 0}, train={"learning_rate": 2e-4})
    model, before, after, optimizer = _train(run)
    assert type(optimizer).__module__.startswith("apollo_torch")
    projected = [p for g in optimizer.param_groups if "rank" in g for p in g["params"]]
    assert projected and all(p.ndim == 2 and min(p.shape) > 4 for p in projected)
    for p in projected:
        moments = optimizer.state[p]["exp_avg"], optimizer.state[p]["exp_avg_sq"]
        assert all(sorted(m.shape) == [4, max(p.shape)] for m in moments), (p.shape, moments[0].shape)
    rest = [p for g in optimizer.param_groups if "rank" not in g for p in g["params"]]
    assert all(optimizer.state[p]["exp_avg"].shape == p.shape for p in rest)  # plain AdamW
    assert _changed(before, after) == set(before)


def test_lora_target_that_matches_nothing_names_the_available_modules(tiny_model, workdir):
    run = _cfg(tiny_model, workdir, {"method": "lora", "target": ["query_key_value"]})
    with pytest.raises(TuningError, match=r"tuning.target: \['query_key_value'\] match no linear module.*q_proj"):
        apply_tuning(load_model(run, load_tokenizer(run.model)), run)


# ----------------------------------------------------------------------------- the registry of methods

MINIMAL = {
    "model": {"name_or_path": "m"},
    "data": {"train": [{"path": "d.json", "format": "alpaca"}]},
    "deepspeed": {"zero_stage": 0},
}


def test_the_registry_is_complete_and_consistent():
    """Every registered method is a section whose `method` literal is its registry name, valid with its defaults,
    importable from rayft_core.config, a member of the run schema's union, with an optimizer that exists."""
    import typing

    from rayft_core import config
    from rayft_core.methods import METHODS, TuningSection
    from rayft_core.train.optim import OPTIMIZERS

    assert set(METHODS) == {"full", "freeze", "lora", "galore", "apollo", "badam", "peft"}
    assert typing.get_args(typing.get_args(config.TuningConfig)[0]) == tuple(METHODS.values())
    for name, section in METHODS.items():
        assert issubclass(section, TuningSection) and getattr(config, section.__name__) is section
        assert typing.get_args(section.model_fields["method"].annotation) == (name,), name
        required = {k: "IA3" for k, f in section.model_fields.items() if f.is_required()}  # peft's type
        assert section(**required).method == name
        run = validate_config({**MINIMAL, "tuning": {"method": name, **required}})
        assert type(run.tuning) is section and run.tuning == section(**required)
        assert section.optimizer in OPTIMIZERS, name
        for alias in section.aliases:
            assert alias not in METHODS and validate_config({**MINIMAL, "tuning": alias}).tuning.method == name


def test_an_unknown_method_names_the_registered_ones():
    from rayft_core.methods import METHODS
    from rayft_core.schema import ConfigError

    with pytest.raises(ConfigError) as e:
        validate_config({**MINIMAL, "tuning": "loar"})
    assert e.value.problems == [
        f"tuning: unknown method 'loar' (did you mean 'lora'?); choose one of {', '.join(repr(m) for m in METHODS)}"
    ]
    with pytest.raises(ConfigError, match="tuning: unknown method 'foo'; choose one of 'full', 'freeze', 'lora'"):
        validate_config({**MINIMAL, "tuning": {"method": "foo"}})


def test_a_missing_optional_package_names_its_extra(monkeypatch):
    """What rayft.checks reports before the cluster starts, from each method's missing_dependency."""
    import importlib.util

    from rayft_core.methods import missing_dependencies

    methods = ("full", "freeze", "lora", "qlora", "galore", "apollo")
    runs = [validate_config({**MINIMAL, "tuning": t}) for t in methods]
    real, optional = importlib.util.find_spec, ("bitsandbytes", "galore_torch", "apollo_torch")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in optional else real(name, *a))
    assert [missing_dependencies(run) for run in runs] == [
        [],
        [],
        [],
        ["tuning.quantization_bit needs bitsandbytes: pip install 'rayft[qlora]'"],
        ["tuning.method galore needs galore-torch: pip install 'rayft[galore]'"],
        ["tuning.method apollo needs apollo-torch: pip install 'rayft[apollo]'"],
    ]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in optional else real(name, *a))
    assert all(missing_dependencies(run) == [] for run in runs)


def test_the_run_schema_imports_neither_torch_nor_peft():
    """The methods import them inside the functions that apply them, so validating a config stays light."""
    import subprocess
    import sys

    code = "import sys, rayft_core.config; print(sorted({'torch', 'peft', 'transformers'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


@pytest.mark.parametrize(
    "tuner, config",
    [("IA3", {}), ("LOHA", {"r": 4}), ("LOKR", {"r": 4}), ("VERA", {"r": 4}), ("OFT", {"oft_block_size": 16}),
     ("FOURIERFT", {"n_frequency": 16}), ("LN_TUNING", {})],
)  # fmt: skip
def test_peft_tuners_train_their_own_modules_only_and_merge_into_the_base(tiny_model, workdir, tmp_path, tuner, config):
    """`tuning: {method: peft, type: ..., config: {...}}`: PEFT's tuner with its own keys; only its modules train,
    the base's weights never move, and `rayft export` merges the saved adapter to the same logits."""
    from transformers import AutoModelForCausalLM

    from rayft_core.export import export_model
    from rayft_core.train.outputs import save_model

    run = _cfg(tiny_model, workdir, {"method": "peft", "type": tuner, "config": config}, train={"learning_rate": 1e-2})
    model, before, after, _ = _train(run)
    base_names = {n for n, _ in AutoModelForCausalLM.from_pretrained(tiny_model("llama")).named_parameters()}
    trainable = _trainable(model)
    assert trainable and not {n.removeprefix("base_model.model.") for n in trainable} & base_names
    assert _changed(before, after) and _changed(before, after) <= trainable
    save_model(model, load_tokenizer(run.model), run, tmp_path / "run")
    merged = AutoModelForCausalLM.from_pretrained(export_model(tmp_path / "run", tmp_path / "merged"))
    batch = _batch(load_tokenizer(run.model))
    with torch.no_grad():
        want, got = model.eval()(input_ids=batch["input_ids"]).logits, merged(input_ids=batch["input_ids"]).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize(
    "tuning, message",
    [
        ({"type": "LOHAA"}, "tuning.type: PEFT has no tuner 'LOHAA' (did you mean LOHA?)"),
        ({"type": "LOHA", "config": {"rr": 4}}, "tuning.config.rr: not a key of PEFT's LoHaConfig (did you mean 'r'?)"),
        ({"type": "PROMPT_TUNING", "config": {"num_virtual_tokens": 4}}, "prepends virtual tokens"),
        ({"type": "ADALORA"}, "AdaLoRA's rank allocator"),
    ],
)
def test_a_peft_tuner_rayft_cannot_train_or_a_misspelt_key_is_refused_before_the_run(tuning, message):
    from rayft_core.schema import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config({**MINIMAL, "tuning": {"method": "peft", **tuning}})
