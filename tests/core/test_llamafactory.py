from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rayft.cli import main
from rayft_core.config import load_config, validate_config
from rayft_core.llamafactory import is_error, looks_like_llamafactory, translate
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


def test_unset_keys_take_llamafactory_defaults_where_they_differ_from_rayfts():
    raw, notes = translate(LF_MINIMAL)
    assert notes == []
    assert raw["train"] == {"num_epochs": 3.0, "micro_batch_size": 8, "learning_rate": 5e-5, "lr_scheduler": "linear"}
    assert raw["data"]["max_seq_len"] == 2048
    # LLaMA-Factory always checkpoints; unset, rayft checkpoints where a worker's memory needs it
    assert "gradient_checkpointing" not in raw["model"] and validate_config(raw).model.gradient_checkpointing == "auto"
    assert raw["tuning"] == "lora" and raw["stage"] == "sft"
    validate_config(raw)


@pytest.mark.parametrize("disable, checkpointing", [(True, False), (False, True)])
def test_gradient_checkpointing_asked_for_either_way_is_kept(disable, checkpointing):
    raw, notes = translate({**LF_MINIMAL, "disable_gradient_checkpointing": disable})
    assert notes == [] and raw["model"]["gradient_checkpointing"] is checkpointing


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
