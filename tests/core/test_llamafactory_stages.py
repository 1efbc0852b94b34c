"""Translating LLaMA-Factory YAMLs of the stages beyond SFT: reward modelling, DPO/KTO and their ORPO/SimPO
losses, PPO with its generation keys; an unavailable stage. (SFT and the keys every stage shares are in
test_llamafactory.py.)"""

from pathlib import Path

import pytest
import yaml

from rayft_core.config import validate_config
from rayft_core.llamafactory import is_error, translate
from tests.helpers import LF_MINIMAL, noted_keys

REPO = Path(__file__).resolve().parents[2]


def test_an_unavailable_stage_says_so():
    _, notes = translate({**LF_MINIMAL, "stage": "grpo", "pref_beta": 0.2, "reward_model": "saves/rm"})
    assert notes[0] == (
        'error: stage: "grpo" -- not a LLaMA-Factory 0.9.5 stage rayft translates (pt, sft, rm, ppo, '
        "dpo and kto are; pref_loss orpo or simpo with stage dpo trains rayft's orpo or simpo; "
        "rayft's grpo is written as a rayft config)"
    )
    assert notes[1:] == [
        "warning: pref_beta: 0.2 -- applies to rayft's stage dpo, kto, orpo, simpo only; this run is a "
        "stage rayft does not translate",
        'warning: reward_model: "saves/rm" -- applies to rayft\'s stage ppo only; this run is a stage '
        "rayft does not translate",
    ]


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
    assert raw["stage"] == {
        "reference_model": "/models/llama3-8b-sft",
        "name": "dpo",
        "beta": 0.25,
        "loss_type": "sigmoid",
        "label_smoothing": 0.1,
        "ftx": 0.5,
        "bco_weight": 0.0,
    }  # the schema's order
    run = validate_config(raw)
    assert (run.stage.name, run.tuning.method, run.stage.reference_model) == ("dpo", "full", "/models/llama3-8b-sft")


@pytest.mark.parametrize(
    "lf, stage",
    [
        ({"stage": "rm"}, "rm"),
        ({"stage": "dpo"}, {"name": "dpo", "beta": 0.1}),
        (
            {"stage": "dpo", "pref_loss": "hinge", "pref_beta": "0.3"},
            {"name": "dpo", "beta": 0.3, "loss_type": "hinge"},
        ),
        (
            {"stage": "dpo", "pref_loss": "ipo", "pref_ftx": 1.0},
            {"name": "dpo", "beta": 0.1, "loss_type": "ipo", "ftx": 1.0},
        ),
        ({"stage": "dpo", "pref_loss": "orpo", "pref_beta": 0.2}, {"name": "orpo", "beta": 0.2}),
        (
            {"stage": "dpo", "pref_loss": "simpo", "pref_beta": 2.5, "simpo_gamma": 1.0, "pref_ftx": 0.1},
            {"name": "simpo", "beta": 2.5, "gamma": 1.0, "ftx": 0.1},
        ),
        (
            {
                "stage": "kto",
                "pref_beta": 0.2,
                "kto_chosen_weight": 1.5,
                "kto_rejected_weight": 0.5,
                "ref_model": "/m/ref",
            },
            {
                "reference_model": "/m/ref",
                "name": "kto",
                "beta": 0.2,
                "desirable_weight": 1.5,
                "undesirable_weight": 0.5,
            },
        ),
        ({"stage": "kto", "pref_ftx": 0.1, "per_device_train_batch_size": 1}, {"name": "kto", "beta": 0.1, "ftx": 0.1}),
        # another stage's keys at LLaMA-Factory's defaults: nothing to say
        ({"stage": "rm", "pref_beta": 0.1, "pref_loss": "sigmoid", "simpo_gamma": 0.5, "ref_model": None}, "rm"),
        ({"stage": "sft", "kto_chosen_weight": 1.0, "pref_ftx": 0, "ld_alpha": None}, "sft"),
        ({"stage": "dpo", "ld_alpha": 0.5}, {"name": "dpo", "beta": 0.1, "ld_alpha": 0.5}),
        ({"stage": "dpo", "pref_bco_weight": 0.5}, {"name": "dpo", "beta": 0.1, "bco_weight": 0.5}),
        ({"stage": "dpo", "pref_loss": "simpo", "ld_alpha": 0.25}, {"name": "simpo", "beta": 0.1, "ld_alpha": 0.25}),
    ],
)
def test_preference_stages_and_their_keys(lf, stage):
    raw, notes = translate({**LF_MINIMAL, **lf})
    assert notes == []
    assert raw["stage"] == stage
    validate_config(raw)


def test_pref_loss_orpo_or_simpo_selects_the_stage_and_simpo_takes_llamafactorys_beta():
    orpo = validate_config(translate({**LF_MINIMAL, "stage": "dpo", "pref_loss": "orpo"})[0])
    simpo = validate_config(translate({**LF_MINIMAL, "stage": "dpo", "pref_loss": "simpo"})[0])
    assert (orpo.stage.name, orpo.stage.beta) == ("orpo", 0.1)
    # LLaMA-Factory's pref_beta defaults to 0.1 for SimPO too; rayft's simpo alone would take 2.0
    assert (simpo.stage.name, simpo.stage.beta, simpo.stage.gamma, simpo.stage.length_normalization) == (
        "simpo",
        0.1,
        0.5,
        True,
    )


def test_translated_orpo_and_simpo_compute_llamafactorys_losses():
    """LLaMA-Factory 0.9.5's CustomDPOTrainer.odds_ratio_loss and simpo_loss (train/dpo/trainer.py), on mean
    answer log-probabilities, against rayft's losses with the translated values."""
    import torch
    import torch.nn.functional as F

    from rayft_core.train.orpo import orpo_loss
    from rayft_core.train.simpo import simpo_loss

    chosen, rejected = torch.tensor([-0.3, -1.2, -2.0, -0.05]), torch.tensor([-0.9, -0.4, -2.5, -3.0])
    lf = {**LF_MINIMAL, "stage": "dpo", "pref_beta": 0.3, "simpo_gamma": 0.8}
    simpo = validate_config(translate({**lf, "pref_loss": "simpo"})[0]).stage
    orpo = validate_config(translate({**lf, "pref_loss": "orpo"})[0]).stage
    beta, gamma = 0.3, 0.8

    lf_simpo = -F.logsigmoid(beta * ((chosen - rejected) - gamma / beta))
    log_odds = (chosen - rejected) - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected)))
    lf_orpo = -chosen + beta * -F.logsigmoid(log_odds)

    assert torch.allclose(simpo_loss(chosen, rejected, simpo.beta, simpo.gamma, simpo.label_smoothing)[0], lf_simpo)
    assert torch.allclose(orpo_loss(chosen, rejected, orpo.beta)[0], lf_orpo)


@pytest.mark.parametrize(
    "lf, key, why",
    [
        (
            {"stage": "kto", "simpo_gamma": 1.0},
            "simpo_gamma",
            "applies to rayft's stage simpo only; this run is stage kto",
        ),
        (
            {"stage": "rm", "pref_beta": 0.2},
            "pref_beta",
            "applies to rayft's stage dpo, kto, orpo, simpo only; this run is stage rm",
        ),
        (
            {"stage": "sft", "ref_model": "/m/ref"},
            "ref_model",
            "applies to rayft's stage dpo, kto only; this run is stage sft",
        ),
        (
            {"stage": "dpo", "pref_loss": "orpo", "ref_model": "/m/ref"},
            "ref_model",
            "applies to rayft's stage dpo, kto only; this run is stage dpo with pref_loss orpo (rayft's stage orpo)",
        ),
        (
            {"stage": "dpo", "pref_loss": "simpo", "pref_bco_weight": 0.5},
            "pref_bco_weight",
            "applies to rayft's stage dpo only",
        ),
        ({"stage": "kto", "pref_loss": "hinge"}, "pref_loss", "applies to rayft's stage dpo, orpo, simpo only"),
        ({"stage": "kto", "ld_alpha": 0.5}, "ld_alpha", "applies to rayft's stage dpo, orpo, simpo only"),
        ({"stage": "dpo", "kto_chosen_weight": 2.0}, "kto_chosen_weight", "applies to rayft's stage kto only"),
        (
            {"stage": "dpo", "train_on_prompt": True},
            "train_on_prompt",
            "applies to rayft's stage sft only; this run is stage dpo",
        ),
        ({"stage": "dpo", "ppo_epochs": 2}, "ppo_epochs", "applies to rayft's stage ppo only; this run is stage dpo"),
        (
            {"reward_model_type": "full"},
            "reward_model_type",
            "applies to rayft's stage ppo only; this run is stage sft",
        ),
        (
            {"stage": "rm", "reward_model": "saves/rm"},
            "reward_model",
            "applies to rayft's stage ppo only; this run is stage rm",
        ),
        (
            {"stage": "dpo", "ppo_unknown": 1},
            "ppo_unknown",
            "not an option of LLaMA-Factory 0.9.5's stage ppo that rayft knows",
        ),
        (
            {"stage": "dpo", "lora_dropout": 0.1},
            "lora_dropout",
            "LLaMA-Factory switches dropout off for its stage dpo training",
        ),
        ({"stage": "dpo", "ref_model_adapters": "/m/lora"}, "ref_model_adapters", "only read with ref_model"),
        (
            {"stage": "dpo", "ref_model": "/m/ref", "ref_model_quantization_bit": 4},
            "ref_model_quantization_bit",
            "rayft loads the reference model unquantized",
        ),
        (
            {"stage": "dpo", "pref_loss": "simpo", "dpo_label_smoothing": 0.1},
            "dpo_label_smoothing",
            "LLaMA-Factory refuses label smoothing with pref_loss simpo",
        ),
    ],
)
def test_keys_rayft_reads_differently_or_another_stage_reads_are_noted(lf, key, why):
    raw, notes = translate({**LF_MINIMAL, **lf})
    assert noted_keys(notes) == [key] and not is_error(notes[0]) and why in notes[0], notes
    validate_config(raw)


@pytest.mark.parametrize(
    "lf, key, why",
    [
        (
            {"stage": "rm", "lora_dropout": 0.1},
            "lora_dropout",
            "rayft's stage rm trains without dropout (it compares the scores of two answers): set lora_dropout 0",
        ),
        ({"stage": "kto", "pref_ftx": 0.1}, "pref_ftx", "the two agree at per_device_train_batch_size 1"),
        (
            {"stage": "rm", "train_on_prompt": False, "pref_ftx": 0.0, "lora_dropout": 0.1},
            "lora_dropout",
            "without dropout",
        ),
    ],
)
def test_preference_keys_rayft_would_train_otherwise_stop_the_run(lf, key, why):
    _, notes = translate({**LF_MINIMAL, **lf})
    assert noted_keys(notes) == [key] and is_error(notes[0]) and why in notes[0], notes


def test_what_the_noted_preference_keys_leave_in_the_config():
    raw, _ = translate({**LF_MINIMAL, "stage": "dpo", "lora_dropout": 0.1, "lora_rank": 4})
    assert raw["tuning"] == {"method": "lora", "rank": 4}  # no dropout, as under LLaMA-Factory's DPO trainer
    raw, _ = translate({**LF_MINIMAL, "stage": "dpo", "pref_loss": "simpo", "dpo_label_smoothing": 0.1})
    assert raw["stage"]["label_smoothing"] == 0.1
    raw, _ = translate({**LF_MINIMAL, "stage": "dpo", "ref_model": "/m/ref", "ref_model_quantization_bit": 4})
    assert raw["stage"] == {"reference_model": "/m/ref", "name": "dpo", "beta": 0.1}


@pytest.mark.parametrize(
    "name, stage",
    [
        ("qwen3_lora_dpo.yaml", {"name": "dpo", "beta": 0.1, "loss_type": "sigmoid"}),
        ("qwen3_lora_kto.yaml", {"name": "kto", "beta": 0.1}),
        ("qwen3_lora_reward.yaml", "rm"),
    ],
)
def test_llamafactorys_preference_examples_translate(name, stage):
    raw, notes = translate(yaml.safe_load((REPO / "examples/llamafactory" / name).read_text()))
    assert raw["stage"] == stage and not any(is_error(n) for n in notes)
    assert noted_keys(notes) == [
        "template",
        "preprocessing_num_workers",
        "dataloader_num_workers",
        "overwrite_output_dir",
        "ddp_timeout",
    ]


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
