from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rayft.cli import main
from rayft_core.config import load_config, validate_config
from rayft_core.llamafactory import is_error, looks_like_llamafactory, translate
from tests.conftest import LF_MINIMAL, noted_keys

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
    "model": {"name_or_path": "/models/llama3-8b", "dtype": "bfloat16", "attn_implementation": "flash_attention_2",
              "gradient_checkpointing": False, "trust_remote_code": True, "template": "llama3"},
    "tuning": {"method": "lora", "rank": 16, "alpha": 32, "dropout": 0.05, "target": ["q_proj", "v_proj"],
               "use_rslora": True, "use_dora": False, "init": "pissa", "loraplus_lr_ratio": 16},
    "stage": {"name": "sft", "train_on_prompt": True, "mask_history": True},
    "data": {"train": [{"dataset": "identity", "num_samples": 500}, {"dataset": "alpaca_en_demo", "num_samples": 500}],
             "eval": [{"dataset": "alpaca_eval", "num_samples": 500}], "dataset_dir": "/data/lf", "max_seq_len": 4096,
             "packing": False, "mix": "interleave", "mix_probabilities": [0.75, 0.25], "mix_stopping": "all_exhausted"},
    "train": {"num_epochs": 2.0, "max_steps": 1000, "micro_batch_size": 2, "gradient_accumulation_steps": 4,
              "learning_rate": 1e-4, "lr_scheduler": "constant", "warmup_ratio": 0.1, "weight_decay": 0.01,
              "max_grad_norm": 0.5, "seed": 7, "logging_steps": 5},
    "deepspeed": {"zero_stage": 2, "offload_optimizer": True},
    "cluster": {"num_workers": 8, "use_gpu": True, "cpus_per_worker": 4, "placement_strategy": "SPREAD"},
    "output": {"storage_path": "saves/llama3-8b/lora", "name": "sft", "overwrite": True},
}


def test_a_full_sft_yaml_translates_to_exact_values_with_nothing_to_note():
    raw, notes = translate(FULL_SFT)
    assert notes == []
    assert raw == FULL_SFT_RAYFT
    assert list(raw) == list(FULL_SFT_RAYFT)  # sections in the schema's order
    run = validate_config(raw)
    assert run.global_batch_size == 2 * 4 * 8 and run.tuning.lora_alpha == 32


def test_unset_keys_take_llamafactory_defaults_where_they_differ_from_rayfts():
    raw, notes = translate(LF_MINIMAL)
    assert notes == []
    assert raw["train"] == {"num_epochs": 3.0, "micro_batch_size": 8, "learning_rate": 5e-5, "lr_scheduler": "linear"}
    assert raw["data"]["max_seq_len"] == 2048
    assert raw["model"]["gradient_checkpointing"] is True  # on unless disable_gradient_checkpointing
    assert raw["tuning"] == "lora" and raw["stage"] == "sft"
    validate_config(raw)


def test_every_key_rayft_cannot_honour_is_reported_once_with_its_value_and_why():
    lf = {**LF_MINIMAL, "report_to": "wandb,swanlab", "use_unsloth": True, "save_steps": 500, "save_strategy": "epoch", "eval_steps": 100,
          "preprocessing_num_workers": 16, "ddp_timeout": 180000000, "hf_hub_token": "hf_SECRET", "not_a_key": 1,
          "pref_beta": 0.2, "galore_rank": 4, "freeze_trainable_modules": "mlp", "lr_scheduler_type": "polynomial",
          "template": "qwen3_nothink", "flash_attn": "fa3", "rope_scaling": "llama3", "mix_strategy": "interleave_once",
          "warmup_steps": 50, "resources_per_worker": {"GPU": 2}, "default_system": "You are helpful.",
          # honoured by what rayft does anyway, so not noted:
          "do_train": True, "plot_loss": True, "overwrite_cache": True, "save_only_model": False}
    raw, notes = translate(lf)
    noted = ["report_to", "use_unsloth", "save_strategy", "preprocessing_num_workers", "ddp_timeout",
             "hf_hub_token", "not_a_key", "pref_beta", "galore_rank", "freeze_trainable_modules", "lr_scheduler_type",
             "template", "flash_attn", "rope_scaling", "mix_strategy", "warmup_steps", "resources_per_worker",
             "default_system"]
    assert sorted(noted_keys(notes)) == sorted(noted)
    assert not any(is_error(n) for n in notes)
    assert 'warning: report_to: "wandb,swanlab" -- rayft reports to tensorboard, mlflow and wandb; swanlab' in "\n".join(notes)
    assert raw["output"]["report_to"] == ["wandb"]
    assert "hf_SECRET" not in "\n".join(notes)  # tokens are never echoed
    assert any(n.startswith('warning: not_a_key: 1 -- not a LLaMA-Factory 0.9.5 training key') for n in notes)
    assert raw["train"]["lr_scheduler"] == "linear" and raw["data"]["mix_stopping"] == "all_exhausted"
    validate_config(raw)


@pytest.mark.parametrize("lf, key", [
    ({"stage": "grpo"}, "stage"), ({"stage": "ppo"}, "reward_model"),
    ({"stage": "ppo", "reward_model": "http://rm:8000", "reward_model_type": "api"}, "reward_model_type"),
    ({"stage": "ppo", "reward_model": "saves/rm", "do_sample": False}, "do_sample"),
    ({"stage": "ppo", "reward_model": "saves/rm", "num_beams": 4}, "num_beams"),
    ({"stage": "ppo", "reward_model": "saves/rm", "max_new_tokens": 0}, "max_new_tokens"),
    ({"stage": "ppo", "reward_model": "saves/rm", "ref_model": "/m/ref"}, "ref_model"),
    ({"stage": "ppo", "reward_model": "/m/rm", "reward_model_type": "full", "reward_model_adapters": "/m/rm-lora"},
     "reward_model_adapters"),
    ({"stage": "dpo", "pref_loss": "kto_pair"}, "pref_loss"), ({"stage": "dpo", "pref_loss": "bco"}, "pref_loss"),
    ({"stage": "dpo", "pref_bco_weight": 0.5}, "pref_bco_weight"),
    ({"stage": "dpo", "pref_loss": "hinge", "dpo_label_smoothing": 0.1}, "dpo_label_smoothing"),
    ({"stage": "dpo", "pref_loss": "orpo", "dpo_label_smoothing": 0.1}, "dpo_label_smoothing"),
    ({"stage": "dpo", "pref_loss": "orpo", "pref_ftx": 0.5}, "pref_ftx"),
    ({"stage": "dpo", "ld_alpha": 0.5}, "ld_alpha"), ({"stage": "dpo", "pref_loss": "simpo", "ld_alpha": 0.5}, "ld_alpha"),
    ({"stage": "kto", "ref_model": "/m/ref", "ref_model_adapters": "/m/ref-lora"}, "ref_model_adapters"),
    ({"stage": "dpo", "pissa_init": True}, "pissa_init"), ({"stage": "kto", "pissa_init": True}, "pissa_init"),
    ({"finetuning_type": "oft"}, "finetuning_type"),
    ({"finetuning_type": "full", "quantization_bit": 4}, "quantization_bit"),
    ({"quantization_bit": 2}, "quantization_bit"),
    ({"do_train": False, "do_predict": True}, "do_train"),
    ({"adapter_name_or_path": "saves/lora"}, "adapter_name_or_path"),
    ({"dataset_dir": "REMOTE:llamafactory/demo_data"}, "dataset_dir"),
    ({"model_name_or_path": None}, "model_name_or_path"),
])
def test_what_would_change_the_run_is_an_error_level_note(lf, key):
    _, notes = translate({**LF_MINIMAL, **lf})
    errors = [n for n in notes if is_error(n)]
    assert noted_keys(errors) == [key]


@pytest.mark.parametrize("lf, storage_path, name", [
    ({"output_dir": "saves/llama3-8b/lora/sft"}, "saves/llama3-8b/lora", "sft"),
    ({"output_dir": "tmp_dir"}, ".", "tmp_dir"),
    ({"output_dir": "/abs/runs/qwen/"}, "/abs/runs", "qwen"),
    ({"output_dir": "tmp_dir", "ray_storage_path": "./saves"}, "./saves", "tmp_dir"),
    ({"output_dir": "tmp_dir", "ray_storage_path": "./saves", "ray_run_name": "r1"}, "./saves", "r1"),
])
def test_output_dir_splits_into_storage_path_and_name(lf, storage_path, name):
    raw, notes = translate({**LF_MINIMAL, **lf})
    assert (raw["output"]["storage_path"], raw["output"]["name"]) == (storage_path, name)
    assert noted_keys(notes) == (["output_dir"] if "ray_run_name" in lf else [])  # superseded, said so


@pytest.mark.parametrize("path, expected", [
    ("examples/deepspeed/ds_z0_config.json", {"zero_stage": 0}),
    ("ds_z2_config.json", {"zero_stage": 2}),
    ("/x/ds_z2_offload_config.json", {"zero_stage": 2, "offload_optimizer": True}),
    ("ds_z3_config.json", {"zero_stage": 3}),
    ("examples/deepspeed/ds_z3_offload_config.json", {"zero_stage": 3, "offload_optimizer": True, "offload_params": True}),
    ("configs/my_zero3.json", {"config_file": "configs/my_zero3.json"}),
])
def test_llamafactory_deepspeed_configs_are_recognised_by_name(path, expected):
    raw, _ = translate({**LF_MINIMAL, "finetuning_type": "full", "deepspeed": path})
    assert raw["deepspeed"] == expected


def test_galore_becomes_rayfts_galore_method_without_zero():
    raw, notes = translate({**LF_MINIMAL, "finetuning_type": "full", "use_galore": True, "galore_rank": 32,
                            "galore_update_interval": 100, "galore_target": "mlp,self_attn",
                            "deepspeed": "ds_z2_config.json"})
    assert raw["tuning"] == {"method": "galore", "rank": 32, "update_proj_gap": 100, "scale": 2.0,
                             "target": ["mlp", "self_attn"]}
    assert raw["deepspeed"] == {"zero_stage": 0} and noted_keys(notes) == ["deepspeed"]
    validate_config(raw)


def test_freeze_and_quantized_lora():
    raw, _ = translate({**LF_MINIMAL, "finetuning_type": "freeze", "freeze_trainable_layers": 4,
                        "freeze_trainable_modules": "all", "freeze_extra_modules": "embed_tokens,lm_head"})
    assert raw["tuning"] == {"method": "freeze", "trainable_layers": 4, "trainable_modules": ["embed_tokens", "lm_head"]}
    raw, _ = translate({**LF_MINIMAL, "quantization_bit": 4, "lora_target": "all"})
    assert raw["tuning"] == {"method": "lora", "target": "all", "quantization_bit": 4}


@pytest.mark.parametrize("strategy, mix, stopping", [
    ("concat", "concat", None), ("interleave_under", "interleave", "first_exhausted"),
    ("interleave_over", "interleave", "all_exhausted"),
])
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
    result = CliRunner().invoke(main, ["config", "validate", str(lf), "tuning.rank=32", "cluster.num_workers=2"])
    assert result.exit_code == 0, result.output
    assert "warning: ddp_timeout: 100" in result.stderr and "valid (sft, lora, 2 worker(s)" in result.stdout

    lf.write_text(yaml.safe_dump({**LF_MINIMAL, "stage": "ppo"}))
    for command in (["config", "validate", str(lf)], ["config", "import-llamafactory", str(lf)]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2 and 'error: reward_model: "(missing)" -- required by stage ppo' in result.stderr

    rayft_yaml = str(REPO / "examples/sft_lora.yaml")
    result = CliRunner().invoke(main, ["config", "import-llamafactory", rayft_yaml])
    assert result.exit_code == 2 and "not a LLaMA-Factory training YAML" in result.stderr
