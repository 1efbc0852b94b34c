from pathlib import Path

import pytest
import yaml

from rayft_core.config import RunConfig, load_config, validate_config
from rayft_core.llamafactory import is_error, translate
from rayft_core.schema import ConfigError
from rayft_core.serve_config import load_serve_config

REPO = Path(__file__).resolve().parents[2]
MINIMAL = {"model": {"name_or_path": "m"}, "data": {"train": [{"path": "d.json", "format": "alpaca"}]}}


def problems(raw: dict, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(data=raw, overrides=overrides)
    return e.value.problems


def test_defaults_live_in_the_schema():
    run = validate_config(MINIMAL)
    assert run.stage.name == "sft" and run.tuning.method == "lora"
    assert run.tuning.lora_alpha == 16  # derived: 2 x rank
    assert run.global_batch_size == 4


def test_unknown_keys_name_the_closest_valid_key_and_all_errors_come_at_once():
    raw = {
        "model": {"name_or_path": "m", "dtyp": "auto"},
        "tuning": {"method": "lora", "rnak": 4},
        "data": {"train": [{"path": "a", "format": "alpaca", "num_sample": 3}]},
        "train": {"learning_rate": -0.1},
    }
    found = problems(raw)
    assert "model.dtyp: unknown key (did you mean 'dtype'?)" in found
    assert "tuning.rnak: unknown key (did you mean 'rank'?)" in found
    assert "data.train[0].num_sample: unknown key (did you mean 'num_samples'?)" in found
    assert "train.learning_rate: Input should be greater than 0, got -0.1" in found
    assert len(found) == 4


def test_union_sections_reject_keys_of_other_members():
    found = problems({**MINIMAL, "stage": {"name": "pt", "train_on_prompt": True}})
    assert any(p.startswith("stage.train_on_prompt: unknown key") for p in found)
    found = problems({**MINIMAL, "tuning": "loar"})
    assert found == [
        "tuning: unknown method 'loar' (did you mean 'lora'?); choose one of 'full', 'freeze', 'lora', 'galore', 'apollo', 'badam', 'peft'"
    ]


def test_overrides_are_parsed_as_yaml_and_create_sections():
    run = load_config(
        data=MINIMAL,
        overrides=["train.learning_rate=3e-4", "tuning.rank=32", "stage.train_on_prompt=true", "cluster.use_gpu=false"],
    )
    assert run.train.learning_rate == 3e-4 and run.tuning.rank == 32 and run.stage.train_on_prompt
    assert run.cluster.use_gpu is False
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(data=MINIMAL, overrides=["train.learning_rate"])


def test_shorthands():
    assert validate_config({**MINIMAL, "tuning": "qlora"}).tuning.quantization_bit == 4
    assert validate_config({**MINIMAL, "stage": "sft"}).stage.name == "sft"


@pytest.mark.parametrize(
    "sections, expected",
    [
        ({"tuning": "galore", "deepspeed": {"zero_stage": 3}}, "deepspeed.zero_stage: GaLore needs whole 2-D weights"),
        ({"tuning": "qlora", "deepspeed": {"zero_stage": 3}}, "deepspeed.zero_stage: a bitsandbytes-quantized base"),
        ({"deepspeed": {"zero_stage": 2, "offload_params": True}}, "deepspeed.offload_params: parameter offload needs"),
        ({"deepspeed": {"zero_stage": 3, "offload_nvme_path": "/nvme"}}, "deepspeed.offload_nvme_path: nothing is"),
        ({"deepspeed": {"zero_stage": 2, "max_live_parameters": 10**8}}, "deepspeed.max_live_parameters: a ZeRO-3"),
        ({"data": {**MINIMAL["data"], "streaming": True}}, "train.max_steps: a streamed dataset has no length"),
        (
            {"model": {"name_or_path": "m", "template": "qwen2"}},
            "model.template: unknown template 'qwen2'; did you mean 'qwen'?",
        ),
        ({"data": {**MINIMAL["data"], "mix_probabilities": [1.0]}}, "data: mix_probabilities needs mix: interleave"),
        ({"data": {"train": [{"path": "a", "dataset": "b"}]}}, "data.train[0]: give exactly one of dataset"),
        ({"stage": "dpo", "tuning": {"dropout": 0.1}}, "tuning.dropout: stage dpo trains without dropout"),
        (
            {"checkpoint": {"save_steps": 10, "keep_best": True}},
            "checkpoint.keep_best: ranking checkpoints by eval/loss needs",
        ),
        (
            {
                "checkpoint": {"save_steps": 10, "keep_best": True},
                "train": {"eval_steps": 4},
                "data": {**MINIMAL["data"], "val_size": 0.1},
            },
            "checkpoint.keep_best: save_steps (10) must be a multiple of",
        ),
        ({"stage": "rm", "data": {**MINIMAL["data"], "packing": True}}, "data.packing: stage rm scores whole answers"),
        ({"stage": {"name": "simpo", "gama": 1}}, "stage.gama: unknown key (did you mean 'gamma'?)"),
        (
            {"train": {"early_stopping_patience": 3, "eval_steps": 5}},
            "train.early_stopping_patience: stopping on eval/loss needs",
        ),
        (
            {"train": {"early_stopping_patience": 3}, "data": {**MINIMAL["data"], "val_size": 0.1}},
            "train.early_stopping_patience: stopping on eval/loss needs",
        ),
    ],
)
def test_combinations_that_cannot_work_are_rejected(sections, expected):
    assert any(p.startswith(expected) for p in problems({**MINIMAL, **sections}))


def test_json_schema_documents_every_field():
    schema = RunConfig.model_json_schema()
    lora = schema["$defs"]["LoraTuning"]["properties"]
    assert "description" in lora["rank"] and lora["rank"]["default"] == 8


@pytest.mark.parametrize(
    "path",
    sorted(
        p.relative_to(REPO)
        for d in ("examples", "jobs")
        for p in (REPO / d).rglob("*.yaml")
        if p.name != "runtime_env.yaml"
    ),  # a Ray runtime_env, not a run config
    ids=str,
)
def test_every_shipped_yaml_validates(path):
    if path.name == "serve.yaml":  # a serving config
        load_serve_config(REPO / path)
        return
    if "llamafactory" in path.parts:  # LLaMA-Factory YAMLs, read through the translator as `rayft train` does
        raw, notes = translate(yaml.safe_load((REPO / path).read_text()))
        assert not [n for n in notes if is_error(n)]
        validate_config(raw)
        return
    load_config(REPO / path)


def test_storage_path_may_be_a_uri():
    run = validate_config({**MINIMAL, "output": {"storage_path": "s3://bucket/runs/", "name": "a"}})
    assert run.output.dir == "s3://bucket/runs/a"
    assert run.with_absolute_paths().output.storage_path == "s3://bucket/runs/"
    local = validate_config({**MINIMAL, "output": {"storage_path": "runs", "name": "a"}})
    assert local.output.dir == str(Path("runs").absolute() / "a")


def test_early_stopping_counts_evaluations_without_improvement():
    from rayft_core.train.checkpoint import TrainerState

    run = validate_config(
        {
            **MINIMAL,
            "train": {"early_stopping_patience": 2, "early_stopping_threshold": 0.01, "eval_steps": 1},
            "data": {**MINIMAL["data"], "val_size": 0.1},
        }
    )
    state = TrainerState()
    assert state.record_eval(1.0, run) is None and state.best_eval == 1.0
    assert state.record_eval(0.995, run) is None  # lower, but by less than the threshold: not an improvement
    assert state.best_eval == 0.995 and state.evals_without_improvement == 1
    assert state.record_eval(0.9, run) is None and state.evals_without_improvement == 0  # improved: counting restarts
    assert state.record_eval(0.95, run) is None
    stop = state.record_eval(0.91, run)
    assert stop is not None and stop["best_eval_loss"] == 0.9 and "for 2 evaluations" in stop["reason"]
    assert TrainerState().record_eval(None, run) is None  # a stage without eval/loss never stops early


@pytest.mark.parametrize(
    "low, high", [("rayft_core.data.templates", "rayft_core.config"), ("rayft_core.methods", "rayft_core.config")]
)
def test_the_run_schema_is_imported_by_its_parts_never_back(low, high):
    """The schema checks template names and builds its tuning union from these; they never import it back, not
    even inside a function or for type checking, so there is no import circle."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("rayft_core", cache_dir=None)
    assert graph.direct_import_exists(importer=high, imported=low, as_packages=True)
    assert graph.find_shortest_chain(importer=low, imported=high, as_packages=True) is None


def test_a_worker_counts_the_time_it_waits_for_batches_and_skips_none():
    """perf/data_wait_s and summary.json's data_wait_seconds_per_worker: the seconds a worker spent inside the
    batch iterator, reported once each; the batches themselves go through unchanged (two epochs of three)."""
    import time

    from rayft_core.train.checkpoint import TrainerState
    from rayft_core.train.plan import TrainPlan
    from rayft_core.train.session import WorkerSession

    run = validate_config(MINIMAL)
    plan = TrainPlan(micro_batches_per_epoch=3, num_epochs=2, total_steps=6)
    session = WorkerSession(run, plan, report=lambda *a, **k: None, rank=0, world_size=1)
    session.state = TrainerState()

    def slow_epoch(epoch):
        for i in range(3):
            time.sleep(0.05)
            yield (epoch, i)

    seen = []
    for batch in session.batches(slow_epoch):
        seen.append(batch)
        if len(seen) == 3:
            first = session.waited()
            time.sleep(0.2)  # training: not waiting
    assert seen == [(e, i) for e in range(2) for i in range(3)]
    assert 0.15 <= first < 0.35 and 0.15 <= session.waited() < 0.35  # three 0.05 s waits each time, not the 0.2 s
    assert session.waited() == 0.0 and 0.3 <= session.data_wait < 0.6


def test_grpo_algorithms_are_recipes_the_stage_can_override():
    from rayft_core.stage_config import section

    def grpo(**keys):
        from pydantic import TypeAdapter

        from rayft_core.stage_config import StageConfig

        return TypeAdapter(StageConfig).validate_python({"name": "grpo", **keys})

    assert (
        grpo().loss_aggregation == "token-mean" and grpo().clip_eps_high is None and section("grpo").advantage == "grpo"
    )
    dapo = grpo(algorithm="dapo", max_new_tokens=100)
    assert (dapo.clip_eps_high, dapo.overlong_buffer, dapo.loss_aggregation) == (0.28, 20, "token-mean")
    gspo = grpo(algorithm="gspo", clip_eps=0.01)  # the stage's own key wins
    assert (gspo.importance_ratio, gspo.clip_eps, gspo.clip_eps_high) == ("sequence", 0.01, 4e-4)
    dr = grpo(algorithm="dr_grpo")
    assert (dr.normalize_std, dr.loss_aggregation) == (False, "seq-mean-token-sum-norm")
    assert grpo(algorithm="reinforce++_baseline").advantage == "reinforce++_baseline"
    with pytest.raises(ValueError, match="algorithm"):
        grpo(algorithm="ppo2")
