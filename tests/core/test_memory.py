"""The memory a run's workers will hold, as `rayft config validate` explains it (rayft_core.train.memory): each
part divided as its ZeRO stage divides it, and a warning when this machine cannot hold the workers."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from rayft.cli import main
from rayft_core.model.loader import ModelFacts
from rayft_core.train.memory import GB, decide_checkpointing, estimate_memory
from tests.helpers import run_config


def _parts(tiny_model, tmp_path, **sections) -> dict[str, float]:
    sections.setdefault("cluster", {"num_workers": 2})
    run = run_config(tiny_model("llama"), [{"path": "d.json"}], tmp_path, "m", **sections)
    facts = ModelFacts(run)
    estimate = estimate_memory(run, facts.tuned_meta_model, facts.config, 4)
    return {what.split(" (")[0]: b for what, b, _ in estimate.parts}


def test_each_zero_stage_divides_what_it_shards(tiny_model, tmp_path):
    full = {"tuning": {"method": "full"}}
    z0, z1, z2, z3 = (_parts(tiny_model, tmp_path, deepspeed={"zero_stage": s}, **full) for s in range(4))
    total = sum(
        p.numel()
        for p in ModelFacts(
            run_config(tiny_model("llama"), [{"path": "d.json"}], tmp_path, "m")
        ).meta_model.parameters()
    )
    assert z0["parameters"] == total * 4 and z0["gradients"] == total * 4 and z0["optimizer states"] == total * 8
    # ZeRO-1 shards the two moments and the fp32 master copy every ZeRO optimizer keeps
    assert z1["optimizer states"] == total * 12 / 2 and z1["gradients"] == z0["gradients"]
    assert z2["gradients"] == z0["gradients"] / 2 and z2["parameters"] == z0["parameters"]
    assert z3["parameters"] == z0["parameters"] / 2 and "gathered while computing" not in z2
    assert 0 < z3["gathered while computing"] < total * 4  # two decoder layers or the head, the bigger
    assert z3["gradient and prefetch buckets"] == 2 * 5e7 * 4
    prefetch = _parts(tiny_model, tmp_path, deepspeed={"zero_stage": 3, "prefetch_bucket_size": 10**6}, **full)
    assert prefetch["gradient and prefetch buckets"] == (5e7 + 10**6) * 4


def test_lora_checkpointing_and_a_4bit_base_shrink_their_parts(tiny_model, tmp_path):
    full = _parts(tiny_model, tmp_path, tuning={"method": "full"})
    lora = _parts(tiny_model, tmp_path, tuning={"method": "lora", "rank": 4})
    qlora = _parts(tiny_model, tmp_path, tuning={"method": "lora", "rank": 4, "quantization_bit": 4})
    assert lora["optimizer states"] < full["optimizer states"] / 10
    assert qlora["parameters"] < lora["parameters"] and qlora["optimizer states"] == lora["optimizer states"]
    long = {"data": {"max_seq_len": 4096}, "train": {"micro_batch_size": 8, "max_steps": 1}}
    plain = _parts(tiny_model, tmp_path, **long)
    checkpointed = _parts(tiny_model, tmp_path, model={"gradient_checkpointing": True}, **long)
    assert checkpointed["activations"] < plain["activations"]
    split = _parts(tiny_model, tmp_path, cluster={"num_workers": 2, "sequence_parallel_size": 2}, **long)
    assert split["activations"] == plain["activations"] / 2
    pairs = _parts(tiny_model, tmp_path, stage="dpo", **long)  # chosen and rejected answers in one batch
    assert pairs["activations"] == 2 * plain["activations"]


@pytest.mark.parametrize("huge", [False, True])
def test_config_validate_explains_memory_and_warns_past_this_machine(tiny_model, alpaca_file, tmp_path, huge):
    config = {
        "model": {"name_or_path": str(tiny_model("llama"))},
        "data": {"train": [{"path": str(alpaca_file), "format": "alpaca"}], "max_seq_len": 64},
        "tuning": "full",
        "deepspeed": {"zero_stage": 3},
        "cluster": {"num_workers": 2},
        "output": {"storage_path": str(tmp_path / "out")},
    }
    if huge:  # a micro-batch whose activations alone outgrow any test machine
        config["train"] = {"micro_batch_size": 2_000_000}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["config", "validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "memory per worker (estimate, 2 worker(s)):" in result.output
    assert "parameters (1/N)" in result.output and "gathered while computing (ZeRO-3)" in result.output
    assert ("warning: 2 worker(s) need about" in result.output) == huge
    # gradient_checkpointing auto, decided as rayft train decides it: on only where a worker could not do without
    assert f"gradient checkpointing (auto): {'on' if huge else 'off'} on this machine: a worker needs" in result.output
    assert "turn on model.gradient_checkpointing" not in result.output  # it is on where the warning is given


def test_checkpointing_auto_is_on_only_where_a_worker_cannot_hold_its_activations(tiny_model, tmp_path):
    long = {"data": {"max_seq_len": 4096}, "train": {"micro_batch_size": 8, "max_steps": 1}}
    run = run_config(tiny_model("llama"), [{"path": "d.json"}], tmp_path, "m", **long)
    facts = ModelFacts(run)
    assert run.model.gradient_checkpointing == "auto"
    plain = estimate_memory(run, facts.tuned_meta_model, facts.config, 4).total()  # auto unresolved: kept whole

    def decide(budget):
        return decide_checkpointing(run, facts.tuned_meta_model, facts.config, False, budget)

    on, why = decide(plain / 0.8 * 1.01)
    assert (
        not on
        and why
        == f"a worker needs about {plain / GB:.1f} GB without it, within 80% of {plain / 0.8 * 1.01 / GB:.1f} GB"
    )
    on, why = decide(plain / 0.8 * 0.99)
    assert on and "over 80% of" in why
    assert decide(None) == (True, "a worker's GPU memory is not known before it starts")
