"""Translating LLaMA-Factory YAMLs of the stages beyond SFT: reward modelling, DPO/KTO and their ORPO/SimPO
losses; an unavailable stage. (SFT and the keys every stage shares are in test_llamafactory.py, PPO in
test_llamafactory_ppo.py.)"""

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
