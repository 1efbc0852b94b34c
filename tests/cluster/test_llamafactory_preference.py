"""LLaMA-Factory 0.9.5's own preference examples (dpo, kto, reward) trained by `rayft train` on a real local Ray
cluster, on LLaMA-Factory's demo data in ../shared/data. Only the model and the data folder change, plus
overrides that keep the run tiny on a 2-core machine: 3 steps of one example, one worker, 64-token rows, float32."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from rayft.cli import main
from rayft_core.model.value_head import VALUE_HEAD_FILE
from rayft_core.train.outputs import read_metrics
from tests.helpers import SHARED

pytestmark = pytest.mark.usefixtures("ray_cluster")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "llamafactory"
DATA = SHARED / "data"
STEPS = 3


def _train(name: str, model_dir: Path, out: Path) -> list[dict]:
    if not (DATA / "dataset_info.json").is_file():
        pytest.skip(f"LLaMA-Factory's demo data is not in {DATA} (../shared/data, absent from a fresh clone)")
    result = CliRunner().invoke(
        main,
        [
            "train",
            str(EXAMPLES / name),
            f"model.name_or_path={model_dir}",
            "model.dtype=float32",
            f"data.dataset_dir={DATA}",
            "data.max_seq_len=64",
            f"train.max_steps={STEPS}",
            "train.logging_steps=1",
            "train.gradient_accumulation_steps=1",
            "cluster.num_workers=1",
            f"output.storage_path={out}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert 'warning: template: "qwen3_nothink"' in result.output  # the keys rayft reads differently are named
    rows = read_metrics(out / name.removeprefix("qwen3_lora_").removesuffix(".yaml"))
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r["train/loss"]) for r in rows)
    return rows


def test_dpo_example(tiny_model, tmp_path):
    rows = _train("qwen3_lora_dpo.yaml", tiny_model("llama"), tmp_path)
    # policy = reference before the first update (the adapter starts at zero): DPO's loss is ln 2, rewards 0
    assert rows[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert rows[0]["train/rewards/chosen"] == rows[0]["train/rewards/rejected"] == 0
    assert {"train/rewards/accuracies", "train/rewards/margins", "train/logps/chosen"} <= set(rows[-1])


def test_kto_example(tiny_model, tmp_path):
    rows = _train("qwen3_lora_kto.yaml", tiny_model("llama"), tmp_path)
    assert rows[0]["train/loss"] == pytest.approx(0.5, abs=1e-4)  # 1 - sigmoid(0): policy = reference, KL 0
    assert rows[0]["train/kl"] == 0 and all("train/kl" in r for r in rows)
    # one answer a step (per_device_train_batch_size 1): its reward is reported as chosen or rejected by its tag
    assert all({"train/rewards/chosen", "train/rewards/rejected"} & set(r) for r in rows)


def test_reward_example(tiny_model, tmp_path):
    rows = _train("qwen3_lora_reward.yaml", tiny_model("llama"), tmp_path)
    assert {"train/rewards/accuracies", "train/rewards/margins"} <= set(rows[-1])
    assert 0 <= rows[-1]["train/rewards/accuracies"] <= 1
    out = tmp_path / "reward"
    assert (out / VALUE_HEAD_FILE).is_file() and (out / "adapter_model.safetensors").is_file()
