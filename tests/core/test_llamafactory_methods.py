"""LLaMA-Factory's tuning-method keys and the training keys that change what a method trains (finetuning types,
their keys, adapters to continue or merge, NEFTune, token losses), translated to rayft's `tuning:` and `train:`."""

import pytest

from rayft_core.config import validate_config
from rayft_core.llamafactory import translate
from tests.helpers import LF_MINIMAL, errors, noted_keys


def test_neftune_and_the_moe_router_loss_translate():
    raw, notes = translate({**LF_MINIMAL, "neftune_noise_alpha": 5, "moe_aux_loss_coef": 0.01})
    assert not errors(notes)
    run = validate_config(raw)
    assert run.train.neftune_noise_alpha == 5 and run.model.router_aux_loss_coef == 0.01


def test_from_scratch_upcast_layernorm_and_additional_target_translate():
    lf = {
        **LF_MINIMAL, "train_from_scratch": True, "upcast_layernorm": True, "additional_target": "norm,lm_head",
        "use_dft_loss": True, "use_eaft_loss": True,
    }  # fmt: skip
    raw, notes = translate(lf)
    assert not errors(notes)
    run = validate_config(raw)
    assert run.model.from_scratch and run.model.upcast_layernorm and run.tuning.train_modules == ["norm", "lm_head"]
    assert run.train.token_loss == "dft"  # LLaMA-Factory takes DFT first
    raw, notes = translate({**LF_MINIMAL, "use_eaft_loss": True, "eaft_alpha": 0.5})
    assert notes == [] and raw["train"]["token_loss"] == "eaft" and raw["train"]["eaft_alpha"] == 0.5
    _, notes = translate({**LF_MINIMAL, "stage": "pt", "use_dft_loss": True})
    assert "applies it in stage sft only" in notes[0]


@pytest.mark.parametrize(
    "create_new, merged, continued",
    [(False, ["a", "b"], "c"), (True, ["a", "b", "c"], None)],
    ids=["continue-the-last", "create-new"],
)
def test_adapter_name_or_path_merges_and_continues_as_llamafactory_does(create_new, merged, continued):
    raw, notes = translate({**LF_MINIMAL, "adapter_name_or_path": "a,b,c", "create_new_adapter": create_new})
    assert notes == [] and raw["tuning"]["merge_adapters"] == merged and raw["tuning"].get("adapter") == continued


def test_finetuning_type_oft_is_peft_oft_with_llamafactorys_keys():
    raw, notes = translate(
        {**LF_MINIMAL, "finetuning_type": "oft", "oft_block_size": 16, "additional_target": "lm_head"}
    )
    assert notes == []
    assert raw["tuning"] == {
        "method": "peft", "type": "OFT",
        "config": {"oft_block_size": 16, "modules_to_save": ["lm_head"], "target_modules": "all-linear"},
    }  # fmt: skip
    assert validate_config(raw).tuning.peft_config().oft_block_size == 16
    raw, _ = translate({**LF_MINIMAL, "finetuning_type": "oft", "oft_target": "q_proj,v_proj"})
    assert raw["tuning"]["config"] == {"target_modules": ["q_proj", "v_proj"]}


def test_galore_becomes_rayfts_galore_method_without_zero():
    raw, notes = translate(
        {
            **LF_MINIMAL,
            "finetuning_type": "full",
            "use_galore": True,
            "galore_rank": 32,
            "galore_update_interval": 100,
            "galore_target": "mlp,self_attn",
            "deepspeed": "ds_z2_config.json",
        }
    )
    assert raw["tuning"] == {
        "method": "galore",
        "rank": 32,
        "update_proj_gap": 100,
        "scale": 2.0,
        "target": ["mlp", "self_attn"],
    }
    assert raw["deepspeed"] == {"zero_stage": 0} and noted_keys(notes) == ["deepspeed"]
    validate_config(raw)


def test_apollo_becomes_rayfts_apollo_method_without_zero():
    raw, notes = translate(
        {
            **LF_MINIMAL,
            "finetuning_type": "full",
            "use_apollo": True,
            "apollo_rank": 1,
            "apollo_scale": 128,
            "apollo_scale_type": "tensor",
            "apollo_proj": "random",
            "apollo_target": "all",
        }
    )
    assert notes == []
    assert raw["tuning"] == {
        "method": "apollo",
        "rank": 1,
        "scale": 128,
        "scale_type": "tensor",
        "proj": "random",
        "target": "all",
    }
    assert raw["deepspeed"] == {"zero_stage": 0}
    assert validate_config(raw).tuning.scale_type == "tensor"  # APOLLO-Mini
    for lf, key in (
        ({"finetuning_type": "lora", "use_apollo": True}, "use_apollo"),
        ({"finetuning_type": "full", "use_galore": True, "use_apollo": True}, "use_apollo"),
        ({"finetuning_type": "full", "use_apollo": True, "apollo_layerwise": True}, "apollo_layerwise"),
        ({"finetuning_type": "full", "use_apollo": True, "apollo_scale_front": True}, "apollo_scale_front"),
        ({"finetuning_type": "full", "apollo_rank": 8}, "apollo_rank"),  # without use_apollo
    ):
        _, notes = translate({**LF_MINIMAL, **lf})
        assert noted_keys(notes) == [key], (lf, notes)


def test_freeze_and_quantized_lora():
    raw, _ = translate(
        {
            **LF_MINIMAL,
            "finetuning_type": "freeze",
            "freeze_trainable_layers": 4,
            "freeze_trainable_modules": "all",
            "freeze_extra_modules": "embed_tokens,lm_head",
        }
    )
    assert raw["tuning"] == {
        "method": "freeze",
        "trainable_layers": 4,
        "trainable_modules": ["embed_tokens", "lm_head"],
    }
    raw, _ = translate({**LF_MINIMAL, "quantization_bit": 4, "lora_target": "all"})
    assert raw["tuning"] == {"method": "lora", "target": "all", "quantization_bit": 4}


def test_the_method_tables_name_registered_methods_and_their_keys():
    """The LLaMA-Factory finetuning types and method keys rayft translates write methods and keys that exist."""
    from rayft_core.llamafactory_tables import FINETUNING_TYPES, METHOD_KEYS
    from rayft_core.methods import METHODS

    rayft_method = {"oft": "peft"}  # LLaMA-Factory's OFT is PEFT's OFT tuner, its keys PEFT's OFTConfig's
    assert {rayft_method.get(m, m) for m in (*FINETUNING_TYPES, *METHOD_KEYS)} <= set(METHODS)
    for method, keys in METHOD_KEYS.items():
        fields = set(METHODS[rayft_method.get(method, method)].model_fields)
        assert {k.split(".")[0] for k in keys.values() if k} <= fields, method
    from peft import OFTConfig

    assert {k.split(".")[1] for k in METHOD_KEYS["oft"].values()} <= set(OFTConfig.__dataclass_fields__)
