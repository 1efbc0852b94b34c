"""Translating LLaMA-Factory's PPO YAMLs: the stage's keys, its reward and reference models, its generation keys
(the other stages are in test_llamafactory_stages.py)."""

from pathlib import Path

import pytest
import yaml

from rayft_core.config import validate_config
from rayft_core.llamafactory import is_error, translate
from tests.helpers import LF_MINIMAL, noted_keys

REPO = Path(__file__).resolve().parents[2]


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
PPO = {**LF_MINIMAL, "stage": "ppo", "reward_model": "saves/rm", "top_k": 0}


def test_llamafactorys_ppo_example_translates_to_exact_values():
    raw, notes = translate(LF_PPO)
    assert noted_keys(notes) == ["preprocessing_num_workers", "overwrite_output_dir", "ddp_timeout"]
    # the schema's order; LLaMA-Factory's ppo_epochs, TRL's adaptive KL (init 0.2, target 6.0), its temperature
    assert raw["stage"] == {
        "reward_model": "saves/llama3-8b/lora/reward",
        "max_new_tokens": 512,
        "temperature": 0.95,
        "top_p": 0.9,
        "ppo_epochs": 4,
        "name": "ppo",
        "kl_coef": 0.2,
        "adaptive_kl_target": 6.0,
    }
    assert raw["tuning"] == {"method": "lora", "target": "all"}
    # prompts cut to cutoff_len, then up to max_new_tokens generated: rayft's max_seq_len holds both
    assert raw["data"] == {
        "train": [{"dataset": "identity", "num_samples": 1000}, {"dataset": "alpaca_en_demo", "num_samples": 1000}],
        "max_seq_len": 2048 + 512,
    }
    assert raw["train"] == {
        "num_epochs": 3.0,
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 8,
        "learning_rate": 1e-5,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.1,
        "logging_steps": 10,
    }
    assert (raw["output"], raw["checkpoint"]) == (
        {"storage_path": "saves/llama3-8b/lora", "name": "ppo", "overwrite": True},
        {"save_steps": 500},
    )
    run = validate_config(raw)
    st = run.stage
    assert (st.name, st.reward_model, st.ppo_epochs, st.kl_coef, st.adaptive_kl_target, st.adaptive_kl_horizon) == (
        "ppo",
        "saves/llama3-8b/lora/reward",
        4,
        0.2,
        6.0,
        10000,
    )
    assert (st.max_new_tokens, st.temperature, st.top_p, st.normalize_reward, st.whiten_advantages) == (
        512,
        0.95,
        0.9,
        False,
        True,
    )
    assert (run.tuning.method, run.tuning.dropout) == ("lora", 0.0)
    # LLaMA-Factory's rollout batch: per_device_train_batch_size x gradient_accumulation_steps, one step per epoch
    assert run.train.micro_batch_size * run.train.gradient_accumulation_steps == 8


def test_ppo_keys_land_in_the_stage_and_unset_ones_take_llamafactorys_defaults():
    raw, notes = translate(
        {
            **PPO,
            "reward_model_type": "full",
            "ppo_epochs": 2,
            "ppo_target": 3.0,
            "ppo_score_norm": True,
            "ppo_whiten_rewards": False,
            "ppo_buffer_size": 1,
            "ppo_logger": None,
            "temperature": "0.7",
            "do_sample": True,
            "repetition_penalty": 1.0,
            "num_beams": 1,
            "cutoff_len": 1024,
            "lora_rank": 16,
        }
    )
    assert notes == []
    assert raw["stage"] == {
        "reward_model": "saves/rm",
        "max_new_tokens": 1024,
        "temperature": 0.7,
        "top_p": 0.7,
        "ppo_epochs": 2,
        "name": "ppo",
        "kl_coef": 0.2,
        "adaptive_kl_target": 3.0,
        "normalize_reward": True,
    }
    assert raw["data"]["max_seq_len"] == 1024 + 1024 and raw["tuning"] == {"method": "lora", "rank": 16}
    validate_config(raw)


@pytest.mark.parametrize(
    "lf, key, why",
    [
        ({"ppo_logger": "wandb"}, "ppo_logger", "output.report_to"),
        ({"top_k": 50}, "top_k", "top_k is not available"),  # LLaMA-Factory's default, written out: noted only
        ({"top_k": None}, None, None),
        ({"top_k": 0}, None, None),
        ({"val_size": 0}, None, None),
        ({"length_penalty": 2.0}, "length_penalty", "applies to beam search only"),
        ({"max_length": 4096}, "max_length", "only when max_new_tokens is 0 or less"),
        ({"eval_dataset": "alpaca_eval"}, "eval_dataset", "LLaMA-Factory's PPO never evaluates"),
        (
            {"reward_model_quantization_bit": 4},
            "reward_model_quantization_bit",
            "only read with reward_model_type full",
        ),
        (
            {"reward_model": "/m/rm", "reward_model_type": "full", "reward_model_quantization_bit": 4},
            "reward_model_quantization_bit",
            "rayft loads a full reward model unquantized",
        ),
        ({"ref_model_adapters": "/m/lora"}, "ref_model_adapters", "only read with ref_model"),
        ({"pref_beta": 0.2}, "pref_beta", "applies to rayft's stage dpo, kto, orpo, simpo only; this run is stage ppo"),
    ],
)
def test_ppo_keys_rayft_reads_differently_are_noted(lf, key, why):
    raw, notes = translate({**PPO, **lf})
    assert noted_keys(notes) == ([key] if key else []) and not any(is_error(n) for n in notes), notes
    assert why is None or why in notes[0]
    run = validate_config(raw)  # no dropout, no evaluation data
    assert run.tuning.dropout == 0 and not run.data.eval and not run.data.val_size


@pytest.mark.parametrize(
    "lf, key, why",
    [
        ({"lora_dropout": 0.05}, "lora_dropout", "rayft's stage ppo trains without dropout"),
        ({"ppo_buffer_size": 4}, "ppo_buffer_size", "one optimizer step per ppo epoch"),
        ({"ppo_whiten_rewards": True}, "ppo_whiten_rewards", "rayft whitens the advantages"),
        ({"top_k": 20}, "top_k", "top_k is not available"),
        ({"repetition_penalty": 1.2}, "repetition_penalty", "not available for rayft's PPO rollouts"),
        ({"val_size": 0.1}, "val_size", "rayft's stage ppo has no evaluation loss and would train on all of them"),
        ({"pissa_init": True}, "pissa_init", "a PiSSA adapter cannot serve stage ppo's reference"),
    ],
)
def test_ppo_keys_rayft_would_train_otherwise_stop_the_run(lf, key, why):
    _, notes = translate({**PPO, **lf})
    assert noted_keys(notes) == [key] and is_error(notes[0]) and why in notes[0], notes


def test_top_k_left_unset_is_llamafactorys_50_which_rayft_cannot_sample_with():
    _, notes = translate({**LF_MINIMAL, "stage": "ppo", "reward_model": "saves/rm"})
    assert notes == [
        'warning: top_k: "(missing)" -- rayft\'s rollouts sample by temperature and top_p alone; top_k is '
        "not available (LLaMA-Factory's default is 50, 0 turns it off)"
    ]


def test_ppo_error_notes_name_rayfts_alternatives():
    _, notes = translate({**LF_MINIMAL, "stage": "ppo", "top_k": 0})
    assert notes == [
        'error: reward_model: "(missing)" -- required by stage ppo: a reward model (a `stage: rm` output); '
        "rayft can also score with stage.reward_functions (verifiable rewards, written in a rayft config) "
        "instead of or beside it"
    ]
    raw, notes = translate({**PPO, "reward_model": "http://rm:8000/v1/score", "reward_model_type": "api"})
    assert noted_keys(notes) == ["reward_model_type"] and is_error(notes[0]) and "stage.reward_functions" in notes[0]
    assert "reward_model" not in raw["stage"]  # an address, not a model
    for kind in ("lora", "full"):  # rayft tells an adapter from a full model by the directory
        raw, notes = translate({**PPO, "reward_model_type": kind})
        assert notes == [] and raw["stage"]["reward_model"] == "saves/rm"


def test_generation_keys_outside_stage_ppo_are_noted_as_before():
    raw, notes = translate(
        {**LF_MINIMAL, "max_new_tokens": 512, "top_p": 0.9, "ppo_epochs": 4, "reward_model_type": "lora"}
    )
    assert noted_keys(notes) == ["max_new_tokens", "top_p"] and not any(is_error(n) for n in notes)
    assert all("not a LLaMA-Factory 0.9.5 training key that rayft knows" in n for n in notes)
    assert raw["stage"] == "sft" and raw["data"]["max_seq_len"] == 2048
