"""The stage table and the stages' traits: one name per stage, the traits the pipeline and launcher read, and
the registries beside them (DPO losses, built-in rewards)."""

import typing

import pytest
import torch

from rayft_core.config import DatasetSpec, RunConfig
from rayft_core.data import IGNORE_INDEX
from rayft_core.data.collate import padding_value
from rayft_core.data.registry import DatasetError, check_stage_fit
from rayft_core.stage_base import PAIR, PROMPT, TAGGED, TEXT
from rayft_core.stage_config import DpoStage, StageConfig, section
from rayft_core.train.dpo import DPO_LOSSES
from rayft_core.train.rewards import BUILTINS
from rayft_core.train.rl_stage import RlStage
from rayft_core.train.stage import SupervisedStage
from rayft_core.train.stages import STAGES
from tests.helpers import QA, run_config


def _config_names() -> set[str]:
    union = typing.get_args(typing.get_args(StageConfig)[0])
    return {typing.get_args(cls.model_fields["name"].annotation)[0] for cls in union}


def test_every_stage_has_a_config_section_and_a_class_and_its_loop():
    assert set(STAGES) == _config_names()
    for name, stage in STAGES.items():
        assert stage.name == name
        traits = section(name)
        assert isinstance(stage, RlStage if traits.loop == "rl" else SupervisedStage), name
        assert (traits.data == PROMPT) == (traits.loop == "rl"), name
        assert not traits.packs_by_default or traits.packs, name


def test_the_data_check_reads_the_shape_not_the_name():
    """A new pair stage gets ranking data accepted and conversations refused, with no name list to update."""

    class NewPairStage(DpoStage):  # a stand-in for a pair stage added later
        pass

    ranking, plain = DatasetSpec(path="x.jsonl", ranking=True), DatasetSpec(path="x.jsonl")
    check_stage_fit(ranking, NewPairStage(), "data.train[0]")
    assert NewPairStage().data == PAIR
    with pytest.raises(DatasetError, match="trains on preference pairs"):
        check_stage_fit(plain, NewPairStage(), "data.train[0]")
    with pytest.raises(DatasetError, match="stage sft cannot use it: it trains on conversations"):
        check_stage_fit(ranking, section("sft"), "data.train[0]")


def test_stage_rules_come_from_the_stage_section():
    run = {
        "model": {"name_or_path": "m"},
        "data": {"train": [{"path": "x.jsonl"}], "packing": True},
        "stage": {"name": "grpo", "group_size": 3, "reward_functions": [{"function": "exact_match"}]},
        "train": {"micro_batch_size": 2},
    }
    problems = RunConfig.model_validate(run).check_combinations()
    assert any(p.startswith("stage.group_size: ") for p in problems), problems
    assert any(p.startswith("data.packing: stage grpo") for p in problems), problems


def test_dpo_losses_match_the_config_choices():
    assert set(DPO_LOSSES) == set(typing.get_args(DpoStage.model_fields["loss_type"].annotation))


def test_builtin_rewards_are_registered_by_name():
    assert {"exact_match", "number_match", "regex"} <= set(BUILTINS)
    assert BUILTINS["exact_match"](completions=[" 4 ", "5"], references=["4", "4"]) == [1.0, 0.0]


def test_the_driver_checks_load_the_tokenizer_and_config_once(tmp_path, tiny_model, monkeypatch):
    """Every check reads the model through one ModelFacts: a DPO run with LoRA targets and a chat template to
    check loads the tokenizer once and the model's config once."""
    import json

    import rayft_core.model.loader as loader
    from rayft.checks import check_config
    from rayft_core.config import validate_config

    counts = {"tokenizer": 0, "config": 0}
    load_tokenizer, build_model_config = loader.load_tokenizer, loader.build_model_config

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(loader, "load_tokenizer", counted("tokenizer", load_tokenizer))
    monkeypatch.setattr(loader, "build_model_config", counted("config", build_model_config))
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps([{"instruction": "q", "chosen": "a", "rejected": "b"}] * 4))
    run = validate_config(
        {
            "model": {"name_or_path": str(tiny_model("llama"))},
            "data": {"train": [{"path": str(data), "ranking": True}], "max_seq_len": 256},
            "stage": {"name": "dpo"},
            "tuning": {"method": "lora", "target": "all"},
            "output": {"storage_path": str(tmp_path / "runs"), "name": "run"},
        }
    )
    check_config(run)
    assert counts == {"tokenizer": 1, "config": 1}


# ----------------------------------------------------------------------------- padding rows (every row trains)


def _aligned_rows(shape: str) -> list[dict]:
    """A few rows as rayft_core.data.formats aligns them, for a stage that trains on ``shape``."""
    if shape == TEXT:
        return [{"text": f"{q} {a}"} for q, a in QA]
    if shape == PAIR:
        return [
            {
                "messages": [{"role": "user", "content": q}],
                "tools": None,
                "chosen": {"role": "assistant", "content": a},
                "rejected": {"role": "assistant", "content": "the lazy dog"},
            }
            for q, a in QA
        ]
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "tools": None}
        for q, a in QA
    ]
    return [{**r, "kto_tag": i % 2 == 0} for i, r in enumerate(rows)] if shape == TAGGED else rows


SUPERVISED = [name for name, stage in STAGES.items() if isinstance(stage, SupervisedStage)]


def _move_away_from_reference(model: torch.nn.Module, tokenizer) -> None:
    """A few SGD steps of language modelling on the test's text, so that rewards against the reference and
    KTO's KL estimate (clamped at 0) are not zero."""
    from rayft_core.train.losses import compute_causal_lm_loss

    ids = tokenizer([f"{q} {a}" for q, a in QA], padding=True, return_tensors="pt")
    batch = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]}
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        compute_causal_lm_loss(getattr(model, "lm", model), batch)[0].backward()  # rm: the LM under its value head
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("name", SUPERVISED)
def test_padding_rows_count_for_nothing(name, tiny_model, tokenizer):
    """The rows that fill an epoch's last step (and a streamed bad row, masked the same way) change neither the
    summed loss nor a metric, and the units the loop divides by are the count the objective reports."""
    stage = STAGES[name]
    run = run_config(tiny_model("llama"), [{"path": "x.jsonl"}], "out", "x", stage=name, tuning={"method": "full"})
    model = stage.build_model(run, tokenizer).eval()
    objective = stage.objective(run, tokenizer, torch.device("cpu"), {})
    _move_away_from_reference(model, tokenizer)
    examples = stage.encode_rows(_aligned_rows(section(name).data), tokenizer, run)
    del examples["row_of_example"]
    pad = tokenizer.pad_token_id
    padded = {c: list(v) + [padding_value(c, pad)] * 3 for c, v in examples.items()}
    with torch.no_grad():
        loss, metrics = objective(model, stage.collate(examples, pad))
        padded_loss, padded_metrics = objective(model, stage.collate(padded, pad))
    n = len(examples[stage.columns[0]])
    assert stage.real_rows(padded) == [True] * n + [False] * 3
    assert stage.loss_units(padded) == stage.loss_units(examples) == metrics["loss"][1] > 0
    assert padded_loss.item() == pytest.approx(loss.item(), rel=1e-4)
    assert padded_metrics.keys() == metrics.keys()
    assert all(total != 0 for total, _ in metrics.values())  # every metric measured something
    for key, (total, count) in metrics.items():
        assert padded_metrics[key] == pytest.approx((total, count), rel=1e-4, abs=1e-6), key
