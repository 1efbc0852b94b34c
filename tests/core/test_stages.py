"""The stage table and the stages' traits: one name per stage, the traits the pipeline and launcher read, and
the registries beside them (DPO losses, built-in rewards)."""

import typing

import pytest

from rayft_core.config import DatasetSpec, RunConfig
from rayft_core.data.registry import DatasetError, check_stage_fit
from rayft_core.stage_config import PAIR, PROMPT, DpoStage, StageConfig, section
from rayft_core.train.dpo import DPO_LOSSES
from rayft_core.train.rewards import BUILTINS
from rayft_core.train.rl_stage import RlStage
from rayft_core.train.stage import SupervisedStage
from rayft_core.train.stages import STAGES


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
