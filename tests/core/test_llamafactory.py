from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rayft.cli import main
from rayft_core.config import load_config, validate_config
from rayft_core.llamafactory import is_error, looks_like_llamafactory, translate
from rayft_core.llamafactory_values import NO_EFFECT, REFUSED
from tests.helpers import LF_MINIMAL, noted_keys

REPO = Path(__file__).resolve().parents[2]

# Parsed from text: PyYAML reads `1e-4` as a string, as users' files will.
FULL_SFT = yaml.safe_load("""
model_name_or_path: /models/llama3-8b
trust_remote_code: true
template: llama3
flash_attn: fa2
disable_gradient_checkpointing: true
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 16
lora_alpha: 32
lora_dropout: 0.05
lora_target: q_proj, v_proj
use_rslora: true
use_dora: false
pissa_init: true
loraplus_lr_ratio: 16
dataset: identity,alpaca_en_demo
eval_dataset: alpaca_eval
dataset_dir: /data/lf
cutoff_len: 4096
max_samples: 500
packing: false
mix_strategy: interleave_over
interleave_probs: 0.75,0.25
train_on_prompt: true
mask_history: true
overwrite_cache: true
output_dir: saves/llama3-8b/lora/sft
overwrite_output_dir: true
plot_loss: true
report_to: none
per_device_train_batch_size: 2
gradient_accumulation_steps: 4
learning_rate: 1e-4
num_train_epochs: 2.0
max_steps: 1000
lr_scheduler_type: constant_with_warmup
warmup_steps: 100
weight_decay: 0.01
max_grad_norm: 0.5
seed: 7
logging_steps: 5
bf16: true
deepspeed: examples/deepspeed/ds_z2_offload_config.json
ray_num_workers: 8
resources_per_worker: {GPU: 1, CPU: 4}
placement_strategy: spread
""")

FULL_SFT_RAYFT = {
    "model": {
        "name_or_path": "/models/llama3-8b",
        "dtype": "bfloat16",
        "attn_implementation": "flash_attention_2",
        "gradient_checkpointing": False,
        "trust_remote_code": True,
        "template": "llama3",
    },
    "tuning": {
        "method": "lora",
        "rank": 16,
        "alpha": 32,
        "dropout": 0.05,
        "target": ["q_proj", "v_proj"],
        "use_rslora": True,
        "use_dora": False,
        "init": "pissa",
        "loraplus_lr_ratio": 16,
    },
    "stage": {"name": "sft", "train_on_prompt": True, "mask_history": True},
    "data": {
        "train": [{"dataset": "identity", "num_samples": 500}, {"dataset": "alpaca_en_demo", "num_samples": 500}],
        "eval": [{"dataset": "alpaca_eval", "num_samples": 500}],
        "dataset_dir": "/data/lf",
        "max_seq_len": 4096,
        "packing": False,
        "mix": "interleave",
        "mix_probabilities": [0.75, 0.25],
        "mix_stopping": "all_exhausted",
    },
    "train": {
        "num_epochs": 2.0,
        "max_steps": 1000,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 4,
        "learning_rate": 1e-4,
        "lr_scheduler": "constant",
        "warmup_ratio": 0.1,
        "weight_decay": 0.01,
        "max_grad_norm": 0.5,
        "seed": 7,
        "logging_steps": 5,
    },
    "deepspeed": {"zero_stage": 2, "offload_optimizer": True},
    "cluster": {"num_workers": 8, "use_gpu": True, "cpus_per_worker": 4, "placement_strategy": "SPREAD"},
    "output": {"storage_path": "saves/llama3-8b/lora", "name": "sft", "overwrite": True},
}


def errors(notes: list[str]) -> list[str]:
    """The keys the error notes name: what stops the run."""
    return noted_keys([n for n in notes if is_error(n)])


def test_a_full_sft_yaml_translates_to_exact_values_with_nothing_to_note_but_overwrite():
    raw, notes = translate(FULL_SFT)
    assert notes == [
        "warning: overwrite_output_dir: true -- in LLaMA-Factory it allows writing into a non-empty "
        "output_dir; rayft replaces an earlier rayft run there and refuses a directory holding files "
        "rayft did not write (nothing of yours is deleted)"
    ]
    assert raw == FULL_SFT_RAYFT
    assert list(raw) == list(FULL_SFT_RAYFT)  # sections in the schema's order
    run = validate_config(raw)
    assert run.global_batch_size == 2 * 4 * 8 and run.tuning.lora_alpha == 32


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


def test_unset_keys_take_llamafactory_defaults_where_they_differ_from_rayfts():
    raw, notes = translate(LF_MINIMAL)
    assert notes == []
    assert raw["train"] == {"num_epochs": 3.0, "micro_batch_size": 8, "learning_rate": 5e-5, "lr_scheduler": "linear"}
    assert raw["data"]["max_seq_len"] == 2048
    assert raw["model"]["gradient_checkpointing"] is True  # on unless disable_gradient_checkpointing
    assert raw["tuning"] == "lora" and raw["stage"] == "sft"
    validate_config(raw)


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


@pytest.mark.parametrize(
    "lf, dtype, noted",
    [
        ({"bf16": True}, "bfloat16", []),
        ({"fp16": True}, "float16", []),
        ({"pure_bf16": True}, "bfloat16", []),
        ({"bf16": True, "fp16": False}, "bfloat16", []),
        ({"bf16": False, "fp16": False}, None, []),
        (
            {"bf16": True, "fp16": True},
            None,
            ["error: fp16: true -- bf16 and fp16 cannot both be true (LLaMA-Factory refuses it too): keep one"],
        ),
    ],
)
def test_bf16_and_fp16(lf, dtype, noted):
    raw, notes = translate({**LF_MINIMAL, **lf})
    assert raw["model"].get("dtype") == dtype and notes == noted


@pytest.mark.parametrize("overwrite", [True, False])
def test_overwrite_output_dir_is_rayfts_overwrite_with_a_note_on_what_it_replaces(overwrite):
    raw, notes = translate({**LF_MINIMAL, "output_dir": "saves/x", "overwrite_output_dir": overwrite})
    assert raw["output"] == {"storage_path": "saves", "name": "x", "overwrite": overwrite}
    assert [is_error(n) for n in notes] == ([False] if overwrite else [])
    assert not overwrite or "refuses a directory holding files rayft did not write" in notes[0]


@pytest.mark.parametrize("lf, eval_steps", [({"val_size": 0.1}, 50), ({"eval_dataset": "alpaca_eval"}, 50), ({}, None)])
def test_eval_steps_are_rayfts_where_there_is_evaluation_data(lf, eval_steps):
    raw, notes = translate({**LF_MINIMAL, **lf, "eval_steps": 50})
    assert raw["train"].get("eval_steps") == eval_steps
    assert noted_keys(notes) == ([] if eval_steps else ["eval_steps"]) and not any(is_error(n) for n in notes)
    validate_config(raw)  # without evaluation data, rayft's own eval_steps would be refused


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
        ({"stage": "dpo", "pref_bco_weight": 0.5}, "pref_bco_weight"),
        ({"stage": "dpo", "pref_loss": "hinge", "dpo_label_smoothing": 0.1}, "dpo_label_smoothing"),
        ({"stage": "dpo", "pref_loss": "orpo", "dpo_label_smoothing": 0.1}, "dpo_label_smoothing"),
        ({"stage": "dpo", "pref_loss": "orpo", "pref_ftx": 0.5}, "pref_ftx"),
        ({"stage": "dpo", "ld_alpha": 0.5}, "ld_alpha"),
        ({"stage": "dpo", "pref_loss": "simpo", "ld_alpha": 0.5}, "ld_alpha"),
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
        ({"use_muon": True}, "use_muon"),
        ({"finetuning_type": "full", "use_apollo": True}, "use_apollo"),
        ({"optim_args": "foo=1"}, "optim_args"),
        ({"lr_scheduler_type": "polynomial"}, "lr_scheduler_type"),
        ({"lr_scheduler_kwargs": {"power": 2}}, "lr_scheduler_kwargs"),
        ({"warmup_steps": 50}, "warmup_steps"),
        ({"label_smoothing_factor": 0.1}, "label_smoothing_factor"),
        ({"use_asft_loss": True}, "use_asft_loss"),
        ({"ignore_pad_token_for_loss": False}, "ignore_pad_token_for_loss"),
        ({"group_by_length": True}, "group_by_length"),
        ({"auto_find_batch_size": True}, "auto_find_batch_size"),
        ({"rope_scaling": "llama3"}, "rope_scaling"),
        ({"fp8": True}, "fp8"),
        ({"model_revision": "v2"}, "model_revision"),
        ({"resize_vocab": True}, "resize_vocab"),
        ({"add_tokens": "<a>,<b>"}, "add_tokens"),
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


@pytest.mark.parametrize(
    "lf, storage_path, name",
    [
        ({"output_dir": "saves/llama3-8b/lora/sft"}, "saves/llama3-8b/lora", "sft"),
        ({"output_dir": "tmp_dir"}, ".", "tmp_dir"),
        ({"output_dir": "/abs/runs/qwen/"}, "/abs/runs", "qwen"),
        ({"output_dir": "tmp_dir", "ray_storage_path": "./saves"}, "./saves", "tmp_dir"),
        ({"output_dir": "tmp_dir", "ray_storage_path": "./saves", "ray_run_name": "r1"}, "./saves", "r1"),
    ],
)
def test_output_dir_splits_into_storage_path_and_name(lf, storage_path, name):
    raw, notes = translate({**LF_MINIMAL, **lf})
    assert (raw["output"]["storage_path"], raw["output"]["name"]) == (storage_path, name)
    assert noted_keys(notes) == (["output_dir"] if "ray_run_name" in lf else [])  # superseded, said so


@pytest.mark.parametrize(
    "path, expected",
    [
        ("examples/deepspeed/ds_z0_config.json", {"zero_stage": 0}),
        ("ds_z2_config.json", {"zero_stage": 2}),
        ("/x/ds_z2_offload_config.json", {"zero_stage": 2, "offload_optimizer": True}),
        ("ds_z3_config.json", {"zero_stage": 3}),
        (
            "examples/deepspeed/ds_z3_offload_config.json",
            {"zero_stage": 3, "offload_optimizer": True, "offload_params": True},
        ),
        ("configs/my_zero3.json", {"config_file": "configs/my_zero3.json"}),
    ],
)
def test_llamafactory_deepspeed_configs_are_recognised_by_name(path, expected):
    raw, _ = translate({**LF_MINIMAL, "finetuning_type": "full", "deepspeed": path})
    assert raw["deepspeed"] == expected


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


@pytest.mark.parametrize(
    "strategy, mix, stopping",
    [
        ("concat", "concat", None),
        ("interleave_under", "interleave", "first_exhausted"),
        ("interleave_over", "interleave", "all_exhausted"),
    ],
)
def test_mix_strategies(strategy, mix, stopping):
    raw, notes = translate({**LF_MINIMAL, "mix_strategy": strategy})
    assert raw["data"]["mix"] == mix and raw["data"].get("mix_stopping") == stopping and notes == []


def test_a_rayft_config_is_not_taken_for_a_llamafactory_one():
    assert looks_like_llamafactory(FULL_SFT) and looks_like_llamafactory({"model_name_or_path": "m", "stage": "sft"})
    assert not looks_like_llamafactory(yaml.safe_load((REPO / "examples/sft_lora.yaml").read_text()))
    assert not looks_like_llamafactory(FULL_SFT_RAYFT) and not looks_like_llamafactory(["a"])


def test_cli_imports_a_llamafactory_yaml_into_a_config_that_validates(tmp_path: Path):
    src = REPO / "examples/llamafactory/llama3_lora_sft.yaml"
    out = tmp_path / "run.yaml"
    result = CliRunner().invoke(main, ["config", "import-llamafactory", str(src), "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.startswith("# rayft run config translated from the LLaMA-Factory config llama3_lora_sft.yaml")
    assert "#   warning: ddp_timeout: 180000000 -- no effect" in text
    run = load_config(out)
    assert (run.model.template, run.tuning.method, run.data.max_seq_len) == ("llama3", "lora", 1024)
    assert [s.dataset for s in run.data.train] == ["identity", "alpaca_en_demo"]
    assert (run.output.storage_path, run.output.name) == ("saves/llama3-8b/lora", "sft")

    printed = CliRunner().invoke(main, ["config", "import-llamafactory", str(src)])
    assert printed.exit_code == 0 and printed.stdout == text


def test_cli_reads_llamafactory_yamls_directly_and_refuses_error_notes(tmp_path: Path):
    lf = tmp_path / "lf.yaml"
    lf.write_text(yaml.safe_dump({**LF_MINIMAL, "save_steps": 100, "ddp_timeout": 100}))
    result = CliRunner().invoke(
        main, ["config", "validate", str(lf), "tuning.rank=32", "cluster.num_workers=2", "--schema-only"]
    )  # its model and dataset are on another machine
    assert result.exit_code == 0, result.output
    assert "warning: ddp_timeout: 100" in result.stderr and "valid (sft, lora, 2 worker(s)" in result.stdout

    for lf_keys, error in (
        ({"stage": "ppo"}, 'error: reward_model: "(missing)" -- required by stage ppo'),
        ({"bf16": True, "fp16": True}, "error: fp16: true -- bf16 and fp16 cannot both be true"),
        ({"optim": "sgd"}, 'error: optim: "sgd" -- rayft trains with AdamW'),
    ):
        lf.write_text(yaml.safe_dump({**LF_MINIMAL, **lf_keys}))
        for command in (["config", "validate", str(lf)], ["config", "import-llamafactory", str(lf)]):
            result = CliRunner().invoke(main, command)
            assert result.exit_code == 2 and error in result.stderr, result.output

    rayft_yaml = str(REPO / "examples/sft_lora.yaml")
    result = CliRunner().invoke(main, ["config", "import-llamafactory", rayft_yaml])
    assert result.exit_code == 2 and "not a LLaMA-Factory training YAML" in result.stderr


def test_the_key_tables_never_import_the_translation_back():
    """rayft_core.llamafactory walks a YAML through rayft_core.llamafactory_keys; the handlers there see the
    translation as a Protocol, so the two modules are no import circle (not even for type checking)."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("rayft_core", cache_dir=None)
    assert graph.direct_import_exists(importer="rayft_core.llamafactory", imported="rayft_core.llamafactory_keys")
    for low in ("rayft_core.llamafactory_keys", "rayft_core.llamafactory_values"):
        assert graph.find_shortest_chain(importer=low, imported="rayft_core.llamafactory") is None


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
