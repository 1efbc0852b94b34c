"""What a LLaMA-Factory YAML's translation says of the keys rayft does not take as they are: each noted once, with
its value and why, a warning when the trained model stays as LLaMA-Factory would train it and an error when it
would change; LLaMA-Factory's own defaults never noted."""

import pytest

from rayft_core.config import validate_config
from rayft_core.llamafactory import is_error, translate
from rayft_core.llamafactory_values import NO_EFFECT, REFUSED
from tests.helpers import LF_MINIMAL, errors, noted_keys


def test_every_key_rayft_cannot_honour_is_reported_once_with_its_value_and_why():
    """Keys that leave the trained model as LLaMA-Factory would train it (logging, speed, uploads, another method's
    or stage's keys, which LLaMA-Factory ignores too) are warnings; the run goes on."""
    lf = {
        **LF_MINIMAL,
        "report_to": "wandb,swanlab",
        "use_unsloth": True,
        "save_steps": 500,
        "save_strategy": "epoch",
        "eval_steps": 100,
        "preprocessing_num_workers": 16,
        "ddp_timeout": 180000000,
        "hf_hub_token": "hf_SECRET",
        "not_a_key": 1,
        "pref_beta": 0.2,
        "galore_rank": 4,
        "freeze_trainable_modules": "mlp",
        "template": "qwen3_nothink",
        "flash_attn": "fa3",
        "resources_per_worker": {"GPU": 2},
        "tf32": True,
        "torch_compile": True,
        "eval_strategy": "steps",
        "push_to_hub": True,
        "data_seed": 3,
        "overwrite_output_dir": True,
        "quantization_type": "fp4",
        "pissa_iter": -1,  # read only with quantization_bit and pissa_init
        # honoured by what rayft does anyway, so not noted:
        "do_train": True,
        "plot_loss": True,
        "overwrite_cache": True,
        "save_only_model": False,
        "adam_epsilon": "1e-8",
    }
    raw, notes = translate(lf)
    noted = [
        "report_to",
        "use_unsloth",
        "save_strategy",
        "preprocessing_num_workers",
        "ddp_timeout",
        "hf_hub_token",
        "not_a_key",
        "pref_beta",
        "galore_rank",
        "freeze_trainable_modules",
        "template",
        "flash_attn",
        "resources_per_worker",
        "tf32",
        "torch_compile",
        "eval_strategy",
        "push_to_hub",
        "data_seed",
        "overwrite_output_dir",
        "quantization_type",
        "pissa_iter",
        "eval_steps",
    ]
    assert sorted(noted_keys(notes)) == sorted(noted)
    assert not any(is_error(n) for n in notes)
    assert (
        'warning: report_to: "wandb,swanlab" -- rayft reports to tensorboard, mlflow and wandb; swanlab'
        in "\n".join(notes)
    )
    assert 'warning: quantization_type: "fp4" -- only read with quantization_bit; no effect' in notes
    assert raw["output"]["report_to"] == ["wandb"]
    assert "hf_SECRET" not in "\n".join(notes)  # tokens are never echoed
    assert any(n.startswith("warning: not_a_key: 1 -- not a LLaMA-Factory 0.9.5 training key") for n in notes)
    validate_config(raw)


def test_notes_start_with_the_llamafactory_key_as_the_yaml_writes_it():
    """Even where a key maps to a rayft key (overwrite_output_dir -> output.overwrite), the note names the YAML's."""
    lf = {
        **LF_MINIMAL,
        "overwrite_output_dir": True,
        "optim": "sgd",
        "lr_scheduler_type": "polynomial",
        "galore_rank": 4,
        "ppo_epochs": 2,
        "not_a_key": 1,
        "bf16": True,
        "fp16": True,
    }
    _, notes = translate(lf)
    assert notes and set(noted_keys(notes)) <= set(lf)
    assert all(
        n.startswith(f"{'error' if is_error(n) else 'warning'}: {k}: ") for n, k in zip(notes, noted_keys(notes))
    )


def test_llamafactorys_default_values_are_never_noted():
    """A YAML that writes out LLaMA-Factory's defaults (use_dora: false, optim: adamw_torch...) trains as it is."""
    for table in (NO_EFFECT, REFUSED):
        for key, (honoured, *_) in table.items():
            for value in honoured:
                _, notes = translate({**LF_MINIMAL, key: value})
                assert notes == [], (key, value)
    _, notes = translate(
        {
            **LF_MINIMAL,
            "use_dora": False,
            "use_rslora": False,
            "pissa_init": False,
            "lora_dropout": 0.0,
            "lora_target": "all",
            "loraplus_lr_ratio": None,
            "quantization_bit": None,
            "use_galore": False,
            "galore_layerwise": False,
            "galore_proj_type": "std",
            "freeze_trainable_modules": "all",
            "mix_strategy": "concat",
            "lr_scheduler_type": "cosine",
            "rope_scaling": None,
            "bf16": False,
            "fp16": False,
            "warmup_steps": 0,
            "overwrite_output_dir": False,
            "val_size": 0.0,
        }
    )
    assert notes == []


@pytest.mark.parametrize(
    "lf, key",
    [
        ({"stage": "grpo"}, "stage"),
        ({"stage": "ppo"}, "reward_model"),
        ({"stage": "ppo", "reward_model": "http://rm:8000", "reward_model_type": "api"}, "reward_model_type"),
        ({"stage": "ppo", "reward_model": "saves/rm", "do_sample": False}, "do_sample"),
        ({"stage": "ppo", "reward_model": "saves/rm", "num_beams": 4}, "num_beams"),
        ({"stage": "ppo", "reward_model": "saves/rm", "max_new_tokens": 0}, "max_new_tokens"),
        ({"stage": "ppo", "reward_model": "saves/rm", "ref_model": "/m/ref"}, "ref_model"),
        (
            {
                "stage": "ppo",
                "reward_model": "/m/rm",
                "reward_model_type": "full",
                "reward_model_adapters": "/m/rm-lora",
            },
            "reward_model_adapters",
        ),
        ({"stage": "dpo", "pref_loss": "kto_pair"}, "pref_loss"),
        ({"stage": "dpo", "pref_loss": "bco"}, "pref_loss"),
        ({"stage": "dpo", "pref_loss": "hinge", "dpo_label_smoothing": 0.1}, "dpo_label_smoothing"),
        ({"stage": "dpo", "pref_loss": "orpo", "dpo_label_smoothing": 0.1}, "dpo_label_smoothing"),
        ({"stage": "dpo", "pref_loss": "orpo", "pref_ftx": 0.5}, "pref_ftx"),
        ({"stage": "kto", "ref_model": "/m/ref", "ref_model_adapters": "/m/ref-lora"}, "ref_model_adapters"),
        ({"stage": "dpo", "pissa_init": True}, "pissa_init"),
        ({"stage": "kto", "pissa_init": True}, "pissa_init"),
        ({"finetuning_type": "bone"}, "finetuning_type"),
        ({"finetuning_type": "full", "quantization_bit": 4}, "quantization_bit"),
        ({"quantization_bit": 2}, "quantization_bit"),
        ({"do_train": False, "do_predict": True}, "do_train"),
        ({"finetuning_type": "full", "adapter_name_or_path": "saves/lora"}, "adapter_name_or_path"),
        ({"adapter_name_or_path": "saves/lora", "adapter_folder": "sub"}, "adapter_folder"),
        ({"dataset_dir": "REMOTE:llamafactory/demo_data"}, "dataset_dir"),
        ({"model_name_or_path": None}, "model_name_or_path"),
        # another optimizer, schedule, loss, precision, model, data or result than rayft's
        ({"bf16": True, "fp16": True}, "fp16"),
        ({"optim": "sgd"}, "optim"),
        ({"adam_beta2": 0.95}, "adam_beta2"),
        ({"optim_args": "foo=1"}, "optim_args"),
        ({"lr_scheduler_type": "polynomial"}, "lr_scheduler_type"),
        ({"lr_scheduler_kwargs": {"power": 2}}, "lr_scheduler_kwargs"),
        ({"warmup_steps": 50}, "warmup_steps"),
        ({"label_smoothing_factor": 0.1}, "label_smoothing_factor"),
        ({"use_asft_loss": True, "use_dft_loss": True}, "use_asft_loss"),
        ({"ignore_pad_token_for_loss": False}, "ignore_pad_token_for_loss"),
        ({"group_by_length": True}, "group_by_length"),
        ({"auto_find_batch_size": True}, "auto_find_batch_size"),
        ({"rope_scaling": "llama3"}, "rope_scaling"),
        ({"fp8": True}, "fp8"),
        ({"model_revision": "v2"}, "model_revision"),
        ({"resize_vocab": True}, "resize_vocab"),
        ({"mix_strategy": "interleave_once"}, "mix_strategy"),
        ({"default_system": "You are helpful."}, "default_system"),
        ({"tool_format": "qwen"}, "tool_format"),
        ({"enable_thinking": False}, "enable_thinking"),
        ({"split_special_tokens": True}, "split_special_tokens"),
        ({"load_best_model_at_end": True}, "load_best_model_at_end"),
        ({"early_stopping_steps": 3}, "early_stopping_steps"),
        ({"resume_from_checkpoint": "saves/x/checkpoint-100"}, "resume_from_checkpoint"),
        ({"quantization_bit": 4, "quantization_type": "fp4"}, "quantization_type"),
        ({"quantization_bit": 4, "double_quantization": False}, "double_quantization"),
        ({"quantization_bit": 4, "quantization_method": "hqq"}, "quantization_method"),
        ({"pissa_init": True, "pissa_iter": -1}, "pissa_iter"),
        ({"loraplus_lr_ratio": 16, "loraplus_lr_embedding": 1e-5}, "loraplus_lr_embedding"),
        ({"use_galore": True}, "use_galore"),
        ({"finetuning_type": "full", "use_galore": True, "galore_proj_type": "left"}, "galore_proj_type"),
        ({"finetuning_type": "full", "use_galore": True, "galore_layerwise": True}, "galore_layerwise"),
        ({"finetuning_type": "freeze", "freeze_trainable_modules": "mlp"}, "freeze_trainable_modules"),
    ],
)
def test_what_would_change_the_run_is_an_error_level_note(lf, key):
    _, notes = translate({**LF_MINIMAL, **lf})
    assert errors(notes) == [key]
