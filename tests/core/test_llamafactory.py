from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rayft.cli import main
from rayft_core.config import load_config, validate_config
from rayft_core.llamafactory import is_error, looks_like_llamafactory, translate

REPO = Path(__file__).resolve().parents[2]
MINIMAL = {"model_name_or_path": "m", "dataset": "alpaca_en_demo"}

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


def keys_in(notes: list[str]) -> list[str]:
    return [n.split(": ", 2)[1] for n in notes]


def test_a_full_sft_yaml_translates_to_exact_values_with_nothing_to_note():
    raw, notes = translate(FULL_SFT)
    assert notes == []
    assert raw == FULL_SFT_RAYFT
    assert list(raw) == list(FULL_SFT_RAYFT)  # sections in the schema's order
    run = validate_config(raw)
    assert run.global_batch_size == 2 * 4 * 8 and run.tuning.lora_alpha == 32


def test_unset_keys_take_llamafactory_defaults_where_they_differ_from_rayfts():
    raw, notes = translate(MINIMAL)
    assert notes == []
    assert raw["train"] == {"num_epochs": 3.0, "micro_batch_size": 8, "learning_rate": 5e-5, "lr_scheduler": "linear"}
    assert raw["data"]["max_seq_len"] == 2048
    assert raw["model"]["gradient_checkpointing"] is True  # on unless disable_gradient_checkpointing
    assert raw["tuning"] == "lora" and raw["stage"] == "sft"
    validate_config(raw)


def test_every_key_rayft_cannot_honour_is_reported_once_with_its_value_and_why():
    lf = {**MINIMAL, "report_to": "wandb,swanlab", "use_unsloth": True, "save_steps": 500, "save_strategy": "epoch", "eval_steps": 100,
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
    assert sorted(keys_in(notes)) == sorted(noted)
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
    _, notes = translate({**MINIMAL, **lf})
    errors = [n for n in notes if is_error(n)]
    assert keys_in(errors) == [key]


def test_an_unavailable_stage_says_so():
    _, notes = translate({**MINIMAL, "stage": "grpo", "pref_beta": 0.2, "reward_model": "saves/rm"})
    assert notes[0] == ('error: stage: "grpo" -- not a LLaMA-Factory 0.9.5 stage rayft translates (pt, sft, rm, ppo, '
                        "dpo and kto are; pref_loss orpo or simpo with stage dpo trains rayft's orpo or simpo; "
                        "rayft's grpo is written as a rayft config)")
    assert notes[1:] == ["warning: pref_beta: 0.2 -- applies to rayft's stage dpo, kto, orpo, simpo only; this run is a "
                         "stage rayft does not translate",
                         'warning: reward_model: "saves/rm" -- applies to rayft\'s stage ppo only; this run is a stage '
                         "rayft does not translate"]


# Parsed from text, as users' files are read.
FULL_DPO = yaml.safe_load("""
model_name_or_path: /models/llama3-8b
stage: dpo
finetuning_type: full
pref_beta: 0.25
pref_loss: sigmoid
pref_ftx: 0.5
dpo_label_smoothing: 0.1
ref_model: /models/llama3-8b-sft
pref_bco_weight: 0.0
ld_alpha: null
dataset: dpo_en_demo
""")


def test_a_dpo_yaml_translates_to_exact_values_with_nothing_to_note():
    raw, notes = translate(FULL_DPO)
    assert notes == []
    assert raw["stage"] == {"reference_model": "/models/llama3-8b-sft", "name": "dpo", "beta": 0.25,
                            "loss_type": "sigmoid", "label_smoothing": 0.1, "ftx": 0.5}  # the schema's order
    run = validate_config(raw)
    assert (run.stage.name, run.tuning.method, run.stage.reference_model) == ("dpo", "full", "/models/llama3-8b-sft")


@pytest.mark.parametrize("lf, stage", [
    ({"stage": "rm"}, "rm"),
    ({"stage": "dpo"}, {"name": "dpo", "beta": 0.1}),
    ({"stage": "dpo", "pref_loss": "hinge", "pref_beta": "0.3"}, {"name": "dpo", "beta": 0.3, "loss_type": "hinge"}),
    ({"stage": "dpo", "pref_loss": "ipo", "pref_ftx": 1.0}, {"name": "dpo", "beta": 0.1, "loss_type": "ipo", "ftx": 1.0}),
    ({"stage": "dpo", "pref_loss": "orpo", "pref_beta": 0.2}, {"name": "orpo", "beta": 0.2}),
    ({"stage": "dpo", "pref_loss": "simpo", "pref_beta": 2.5, "simpo_gamma": 1.0, "pref_ftx": 0.1},
     {"name": "simpo", "beta": 2.5, "gamma": 1.0, "ftx": 0.1}),
    ({"stage": "kto", "pref_beta": 0.2, "kto_chosen_weight": 1.5, "kto_rejected_weight": 0.5, "ref_model": "/m/ref"},
     {"reference_model": "/m/ref", "name": "kto", "beta": 0.2, "desirable_weight": 1.5, "undesirable_weight": 0.5}),
    ({"stage": "kto", "pref_ftx": 0.1, "per_device_train_batch_size": 1}, {"name": "kto", "beta": 0.1, "ftx": 0.1}),
    # another stage's keys at LLaMA-Factory's defaults: nothing to say
    ({"stage": "rm", "pref_beta": 0.1, "pref_loss": "sigmoid", "simpo_gamma": 0.5, "ref_model": None}, "rm"),
    ({"stage": "sft", "kto_chosen_weight": 1.0, "pref_ftx": 0, "ld_alpha": None}, "sft"),
])
def test_preference_stages_and_their_keys(lf, stage):
    raw, notes = translate({**MINIMAL, **lf})
    assert notes == []
    assert raw["stage"] == stage
    validate_config(raw)


def test_pref_loss_orpo_or_simpo_selects_the_stage_and_simpo_takes_llamafactorys_beta():
    orpo = validate_config(translate({**MINIMAL, "stage": "dpo", "pref_loss": "orpo"})[0])
    simpo = validate_config(translate({**MINIMAL, "stage": "dpo", "pref_loss": "simpo"})[0])
    assert (orpo.stage.name, orpo.stage.beta) == ("orpo", 0.1)
    # LLaMA-Factory's pref_beta defaults to 0.1 for SimPO too; rayft's simpo alone would take 2.0
    assert (simpo.stage.name, simpo.stage.beta, simpo.stage.gamma, simpo.stage.length_normalization) == ("simpo", 0.1, 0.5, True)


def test_translated_orpo_and_simpo_compute_llamafactorys_losses():
    """LLaMA-Factory 0.9.5's CustomDPOTrainer.odds_ratio_loss and simpo_loss (train/dpo/trainer.py), on mean
    answer log-probabilities, against rayft's losses with the translated values."""
    import torch
    import torch.nn.functional as F

    from rayft_core.train.orpo import orpo_loss
    from rayft_core.train.simpo import simpo_loss

    chosen, rejected = torch.tensor([-0.3, -1.2, -2.0, -0.05]), torch.tensor([-0.9, -0.4, -2.5, -3.0])
    lf = {**MINIMAL, "stage": "dpo", "pref_beta": 0.3, "simpo_gamma": 0.8}
    simpo = validate_config(translate({**lf, "pref_loss": "simpo"})[0]).stage
    orpo = validate_config(translate({**lf, "pref_loss": "orpo"})[0]).stage
    beta, gamma = 0.3, 0.8

    lf_simpo = -F.logsigmoid(beta * ((chosen - rejected) - gamma / beta))
    log_odds = (chosen - rejected) - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected)))
    lf_orpo = -chosen + beta * -F.logsigmoid(log_odds)

    assert torch.allclose(simpo_loss(chosen, rejected, simpo.beta, simpo.gamma, simpo.label_smoothing)[0], lf_simpo)
    assert torch.allclose(orpo_loss(chosen, rejected, orpo.beta)[0], lf_orpo)


@pytest.mark.parametrize("lf, key, why", [
    ({"stage": "kto", "simpo_gamma": 1.0}, "simpo_gamma", "applies to rayft's stage simpo only; this run is stage kto"),
    ({"stage": "rm", "pref_beta": 0.2}, "pref_beta", "applies to rayft's stage dpo, kto, orpo, simpo only; this run is stage rm"),
    ({"stage": "sft", "ref_model": "/m/ref"}, "ref_model", "applies to rayft's stage dpo, kto only; this run is stage sft"),
    ({"stage": "dpo", "pref_loss": "orpo", "ref_model": "/m/ref"}, "ref_model",
     "applies to rayft's stage dpo, kto only; this run is stage dpo with pref_loss orpo (rayft's stage orpo)"),
    ({"stage": "dpo", "pref_loss": "simpo", "pref_bco_weight": 0.5}, "pref_bco_weight", "applies to rayft's stage dpo only"),
    ({"stage": "kto", "pref_loss": "hinge"}, "pref_loss", "applies to rayft's stage dpo, orpo, simpo only"),
    ({"stage": "kto", "ld_alpha": 0.5}, "ld_alpha", "applies to rayft's stage dpo, orpo, simpo only"),
    ({"stage": "dpo", "kto_chosen_weight": 2.0}, "kto_chosen_weight", "applies to rayft's stage kto only"),
    ({"stage": "dpo", "train_on_prompt": True}, "train_on_prompt", "applies to rayft's stage sft only; this run is stage dpo"),
    ({"stage": "dpo", "ppo_epochs": 2}, "ppo_epochs", "applies to rayft's stage ppo only; this run is stage dpo"),
    ({"reward_model_type": "full"}, "reward_model_type", "applies to rayft's stage ppo only; this run is stage sft"),
    ({"stage": "rm", "reward_model": "saves/rm"}, "reward_model", "applies to rayft's stage ppo only; this run is stage rm"),
    ({"stage": "dpo", "ppo_unknown": 1}, "ppo_unknown", "not an option of LLaMA-Factory 0.9.5's stage ppo that rayft knows"),
    ({"stage": "dpo", "lora_dropout": 0.1}, "lora_dropout", "LLaMA-Factory switches dropout off for its stage dpo training"),
    ({"stage": "rm", "lora_dropout": 0.1}, "lora_dropout", "rayft's stage rm trains without dropout (it compares the scores"),
    ({"stage": "dpo", "ref_model_adapters": "/m/lora"}, "ref_model_adapters", "only read with ref_model"),
    ({"stage": "dpo", "ref_model": "/m/ref", "ref_model_quantization_bit": 4}, "ref_model_quantization_bit",
     "rayft loads the reference model unquantized"),
    ({"stage": "kto", "pref_ftx": 0.1}, "pref_ftx", "the two agree at per_device_train_batch_size 1"),
    ({"stage": "dpo", "pref_loss": "simpo", "dpo_label_smoothing": 0.1}, "dpo_label_smoothing",
     "LLaMA-Factory refuses label smoothing with pref_loss simpo"),
])
def test_keys_rayft_reads_differently_or_another_stage_reads_are_noted(lf, key, why):
    raw, notes = translate({**MINIMAL, **lf})
    assert keys_in(notes) == [key] and not is_error(notes[0]) and why in notes[0], notes
    validate_config(raw)


def test_what_the_noted_preference_keys_leave_in_the_config():
    raw, _ = translate({**MINIMAL, "stage": "dpo", "lora_dropout": 0.1, "lora_rank": 4})
    assert raw["tuning"] == {"method": "lora", "rank": 4}  # no dropout, as under LLaMA-Factory's DPO trainer
    raw, _ = translate({**MINIMAL, "stage": "dpo", "pref_loss": "simpo", "dpo_label_smoothing": 0.1})
    assert raw["stage"]["label_smoothing"] == 0.1
    raw, _ = translate({**MINIMAL, "stage": "dpo", "ref_model": "/m/ref", "ref_model_quantization_bit": 4})
    assert raw["stage"] == {"reference_model": "/m/ref", "name": "dpo", "beta": 0.1}


@pytest.mark.parametrize("name, stage", [("qwen3_lora_dpo.yaml", {"name": "dpo", "beta": 0.1, "loss_type": "sigmoid"}),
                                         ("qwen3_lora_kto.yaml", {"name": "kto", "beta": 0.1}),
                                         ("qwen3_lora_reward.yaml", "rm")])
def test_llamafactorys_preference_examples_translate(name, stage):
    raw, notes = translate(yaml.safe_load((REPO / "examples/llamafactory" / name).read_text()))
    assert raw["stage"] == stage and not any(is_error(n) for n in notes)
    assert keys_in(notes) == ["template", "preprocessing_num_workers", "dataloader_num_workers", "ddp_timeout"]


# LLaMA-Factory's examples/train_lora/llama3_lora_ppo.yaml, the model and reward model as local paths.
LF_PPO = yaml.safe_load("""
model_name_or_path: /models/llama3-8b
reward_model: saves/llama3-8b/lora/reward
stage: ppo
do_train: true
finetuning_type: lora
lora_target: all
dataset: identity,alpaca_en_demo
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
output_dir: saves/llama3-8b/lora/ppo
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
report_to: none
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-5
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
max_new_tokens: 512
top_k: 0
top_p: 0.9
""")
PPO = {**MINIMAL, "stage": "ppo", "reward_model": "saves/rm", "top_k": 0}


def test_llamafactorys_ppo_example_translates_to_exact_values():
    raw, notes = translate(LF_PPO)
    assert keys_in(notes) == ["preprocessing_num_workers", "ddp_timeout"]
    # the schema's order; LLaMA-Factory's ppo_epochs, TRL's adaptive KL (init 0.2, target 6.0), its temperature
    assert raw["stage"] == {"reward_model": "saves/llama3-8b/lora/reward", "max_new_tokens": 512, "temperature": 0.95,
                            "top_p": 0.9, "ppo_epochs": 4, "name": "ppo", "kl_coef": 0.2, "adaptive_kl_target": 6.0}
    assert raw["tuning"] == {"method": "lora", "target": "all"}
    # prompts cut to cutoff_len, then up to max_new_tokens generated: rayft's max_seq_len holds both
    assert raw["data"] == {"train": [{"dataset": "identity", "num_samples": 1000},
                                     {"dataset": "alpaca_en_demo", "num_samples": 1000}], "max_seq_len": 2048 + 512}
    assert raw["train"] == {"num_epochs": 3.0, "micro_batch_size": 1, "gradient_accumulation_steps": 8,
                            "learning_rate": 1e-5, "lr_scheduler": "cosine", "warmup_ratio": 0.1, "logging_steps": 10}
    assert (raw["output"], raw["checkpoint"]) == ({"storage_path": "saves/llama3-8b/lora", "name": "ppo", "overwrite": True},
                                                  {"save_steps": 500})
    run = validate_config(raw)
    st = run.stage
    assert (st.name, st.reward_model, st.ppo_epochs, st.kl_coef, st.adaptive_kl_target, st.adaptive_kl_horizon) == \
        ("ppo", "saves/llama3-8b/lora/reward", 4, 0.2, 6.0, 10000)
    assert (st.max_new_tokens, st.temperature, st.top_p, st.normalize_reward, st.whiten_advantages) == \
        (512, 0.95, 0.9, False, True)
    assert (run.tuning.method, run.tuning.dropout) == ("lora", 0.0)
    # LLaMA-Factory's rollout batch: per_device_train_batch_size x gradient_accumulation_steps, one step per epoch
    assert run.train.micro_batch_size * run.train.gradient_accumulation_steps == 8


def test_ppo_keys_land_in_the_stage_and_unset_ones_take_llamafactorys_defaults():
    raw, notes = translate({**PPO, "reward_model_type": "full", "ppo_epochs": 2, "ppo_target": 3.0, "ppo_score_norm": True,
                            "ppo_whiten_rewards": False, "ppo_buffer_size": 1, "ppo_logger": None, "temperature": "0.7",
                            "do_sample": True, "repetition_penalty": 1.0, "num_beams": 1, "cutoff_len": 1024,
                            "lora_rank": 16})
    assert notes == []
    assert raw["stage"] == {"reward_model": "saves/rm", "max_new_tokens": 1024, "temperature": 0.7, "top_p": 0.7,
                            "ppo_epochs": 2, "name": "ppo", "kl_coef": 0.2, "adaptive_kl_target": 3.0,
                            "normalize_reward": True}
    assert raw["data"]["max_seq_len"] == 1024 + 1024 and raw["tuning"] == {"method": "lora", "rank": 16}
    validate_config(raw)


@pytest.mark.parametrize("lf, key, why", [
    ({"lora_dropout": 0.05}, "lora_dropout", "rayft's stage ppo trains without dropout"),
    ({"ppo_buffer_size": 4}, "ppo_buffer_size", "one optimizer step per ppo epoch"),
    ({"ppo_whiten_rewards": True}, "ppo_whiten_rewards", "rayft whitens the advantages"),
    ({"ppo_logger": "wandb"}, "ppo_logger", "output.report_to"),
    ({"top_k": 50}, "top_k", "top_k is not available"),
    ({"top_k": None}, None, None), ({"top_k": 0}, None, None),
    ({"repetition_penalty": 1.2}, "repetition_penalty", "not available for rayft's PPO rollouts"),
    ({"length_penalty": 2.0}, "length_penalty", "applies to beam search only"),
    ({"max_length": 4096}, "max_length", "only when max_new_tokens is 0 or less"),
    ({"val_size": 0.1}, "val_size", "rayft's stage ppo has no evaluation loss and trains on all of them"),
    ({"eval_dataset": "alpaca_eval"}, "eval_dataset", "LLaMA-Factory's PPO never evaluates"),
    ({"reward_model_quantization_bit": 4}, "reward_model_quantization_bit", "only read with reward_model_type full"),
    ({"reward_model": "/m/rm", "reward_model_type": "full", "reward_model_quantization_bit": 4},
     "reward_model_quantization_bit", "rayft loads a full reward model unquantized"),
    ({"ref_model_adapters": "/m/lora"}, "ref_model_adapters", "only read with ref_model"),
    ({"pref_beta": 0.2}, "pref_beta", "applies to rayft's stage dpo, kto, orpo, simpo only; this run is stage ppo"),
])
def test_ppo_keys_rayft_reads_differently_are_noted(lf, key, why):
    raw, notes = translate({**PPO, **lf})
    assert keys_in(notes) == ([key] if key else []) and not any(is_error(n) for n in notes), notes
    assert why is None or why in notes[0]
    run = validate_config(raw)  # no dropout, no evaluation data
    assert run.tuning.dropout == 0 and not run.data.eval and not run.data.val_size


def test_top_k_left_unset_is_llamafactorys_50_which_rayft_cannot_sample_with():
    _, notes = translate({**MINIMAL, "stage": "ppo", "reward_model": "saves/rm"})
    assert notes == ['warning: top_k: "(missing)" -- rayft\'s rollouts sample by temperature and top_p alone; top_k is '
                     "not available (LLaMA-Factory's default is 50, 0 turns it off)"]


def test_ppo_error_notes_name_rayfts_alternatives():
    _, notes = translate({**MINIMAL, "stage": "ppo", "top_k": 0})
    assert notes == ['error: reward_model: "(missing)" -- required by stage ppo: a reward model (a `stage: rm` output); '
                     "rayft can also score with stage.reward_functions (verifiable rewards, written in a rayft config) "
                     "instead of or beside it"]
    raw, notes = translate({**PPO, "reward_model": "http://rm:8000/v1/score", "reward_model_type": "api"})
    assert keys_in(notes) == ["reward_model_type"] and is_error(notes[0]) and "stage.reward_functions" in notes[0]
    assert "reward_model" not in raw["stage"]  # an address, not a model
    for kind in ("lora", "full"):  # rayft tells an adapter from a full model by the directory
        raw, notes = translate({**PPO, "reward_model_type": kind})
        assert notes == [] and raw["stage"]["reward_model"] == "saves/rm"


def test_generation_keys_outside_stage_ppo_are_noted_as_before():
    raw, notes = translate({**MINIMAL, "max_new_tokens": 512, "top_p": 0.9, "ppo_epochs": 4, "reward_model_type": "lora"})
    assert keys_in(notes) == ["max_new_tokens", "top_p"] and not any(is_error(n) for n in notes)
    assert all("not a LLaMA-Factory 0.9.5 training key that rayft knows" in n for n in notes)
    assert raw["stage"] == "sft" and raw["data"]["max_seq_len"] == 2048


@pytest.mark.parametrize("lf, storage_path, name", [
    ({"output_dir": "saves/llama3-8b/lora/sft"}, "saves/llama3-8b/lora", "sft"),
    ({"output_dir": "tmp_dir"}, ".", "tmp_dir"),
    ({"output_dir": "/abs/runs/qwen/"}, "/abs/runs", "qwen"),
    ({"output_dir": "tmp_dir", "ray_storage_path": "./saves"}, "./saves", "tmp_dir"),
    ({"output_dir": "tmp_dir", "ray_storage_path": "./saves", "ray_run_name": "r1"}, "./saves", "r1"),
])
def test_output_dir_splits_into_storage_path_and_name(lf, storage_path, name):
    raw, notes = translate({**MINIMAL, **lf})
    assert (raw["output"]["storage_path"], raw["output"]["name"]) == (storage_path, name)
    assert keys_in(notes) == (["output_dir"] if "ray_run_name" in lf else [])  # superseded, said so


@pytest.mark.parametrize("path, expected", [
    ("examples/deepspeed/ds_z0_config.json", {"zero_stage": 0}),
    ("ds_z2_config.json", {"zero_stage": 2}),
    ("/x/ds_z2_offload_config.json", {"zero_stage": 2, "offload_optimizer": True}),
    ("ds_z3_config.json", {"zero_stage": 3}),
    ("examples/deepspeed/ds_z3_offload_config.json", {"zero_stage": 3, "offload_optimizer": True, "offload_params": True}),
    ("configs/my_zero3.json", {"config_file": "configs/my_zero3.json"}),
])
def test_llamafactory_deepspeed_configs_are_recognised_by_name(path, expected):
    raw, _ = translate({**MINIMAL, "finetuning_type": "full", "deepspeed": path})
    assert raw["deepspeed"] == expected


def test_galore_becomes_rayfts_galore_method_without_zero():
    raw, notes = translate({**MINIMAL, "finetuning_type": "full", "use_galore": True, "galore_rank": 32,
                            "galore_update_interval": 100, "galore_target": "mlp,self_attn",
                            "deepspeed": "ds_z2_config.json"})
    assert raw["tuning"] == {"method": "galore", "rank": 32, "update_proj_gap": 100, "scale": 2.0,
                             "target": ["mlp", "self_attn"]}
    assert raw["deepspeed"] == {"zero_stage": 0} and keys_in(notes) == ["deepspeed"]
    validate_config(raw)


def test_freeze_and_quantized_lora():
    raw, _ = translate({**MINIMAL, "finetuning_type": "freeze", "freeze_trainable_layers": 4,
                        "freeze_trainable_modules": "all", "freeze_extra_modules": "embed_tokens,lm_head"})
    assert raw["tuning"] == {"method": "freeze", "trainable_layers": 4, "trainable_modules": ["embed_tokens", "lm_head"]}
    raw, _ = translate({**MINIMAL, "quantization_bit": 4, "lora_target": "all"})
    assert raw["tuning"] == {"method": "lora", "target": "all", "quantization_bit": 4}


@pytest.mark.parametrize("strategy, mix, stopping", [
    ("concat", "concat", None), ("interleave_under", "interleave", "first_exhausted"),
    ("interleave_over", "interleave", "all_exhausted"),
])
def test_mix_strategies(strategy, mix, stopping):
    raw, notes = translate({**MINIMAL, "mix_strategy": strategy})
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
    lf.write_text(yaml.safe_dump({**MINIMAL, "save_steps": 100, "ddp_timeout": 100}))
    result = CliRunner().invoke(main, ["config", "validate", str(lf), "tuning.rank=32", "cluster.num_workers=2"])
    assert result.exit_code == 0, result.output
    assert "warning: ddp_timeout: 100" in result.stderr and "valid (sft, lora, 2 worker(s)" in result.stdout

    lf.write_text(yaml.safe_dump({**MINIMAL, "stage": "ppo"}))
    for command in (["config", "validate", str(lf)], ["config", "import-llamafactory", str(lf)]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2 and 'error: reward_model: "(missing)" -- required by stage ppo' in result.stderr

    rayft_yaml = str(REPO / "examples/sft_lora.yaml")
    result = CliRunner().invoke(main, ["config", "import-llamafactory", rayft_yaml])
    assert result.exit_code == 2 and "not a LLaMA-Factory training YAML" in result.stderr
