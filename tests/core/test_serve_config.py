"""The serving config: its errors name the key, `--model DIR` picks what to serve, and what can be
checked before a replica starts (models, adapters against their base, chat templates) is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rayft_core.schema import ConfigError
from rayft_core.serve_config import check_sources, config_for_output, load_serve_config


def test_errors_name_the_key_and_suggest() -> None:
    with pytest.raises(ConfigError) as e:
        load_serve_config(data={"models": [{"id": "a:b", "path": "x", "replicas": {"mx": 2}}], "auht": {}})
    text = str(e.value)
    assert text.startswith("invalid serving config")
    assert "models[0].id: letters, digits" in text and "got 'a:b'" in text
    assert "models[0].replicas.mx: unknown key (did you mean 'max'?)" in text
    assert "auht: unknown key (did you mean 'auth'?)" in text
    with pytest.raises(ConfigError, match="min \\(3\\) must not exceed max \\(2\\)"):
        load_serve_config(data={"models": [{"id": "a", "path": "x", "replicas": {"min": 3, "max": 2}}]})
    with pytest.raises(ConfigError, match="repeated: \\['a'\\]"):
        load_serve_config(data={"models": [{"id": "a", "path": "x"}, {"id": "a", "path": "y"}]})
    with pytest.raises(ConfigError, match="set gpus to 2"):
        load_serve_config(
            data={"models": [{"id": "a", "path": "x", "resources": {"gpus": 1, "tensor_parallel_size": 2}}]}
        )


def _adapter(dir: Path, base: Path, rank: int = 8) -> Path:
    dir.mkdir(parents=True)
    (dir / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "r": rank}))
    return dir


def test_model_dir_resolves_to_merged_full_or_adapter_on_its_base(tiny_model, tmp_path: Path) -> None:
    base = tiny_model("llama")
    run = _adapter(tmp_path / "sft-lora", base)
    assert config_for_output(run) == {
        "models": [{"id": base.name, "path": str(base), "adapters": {"sft-lora": str(run)}}]
    }
    shutil.copytree(base, run / "merged")
    assert config_for_output(run) == {"models": [{"id": "sft-lora", "path": str(run / "merged")}]}
    assert config_for_output(base) == {"models": [{"id": base.name, "path": str(base)}]}
    with pytest.raises(ConfigError, match="neither a model"):
        config_for_output(tmp_path)


def test_sources_checked_before_serving(tiny_model, tmp_path: Path) -> None:
    base, other = tiny_model("llama"), tiny_model("qwen2")
    good = _adapter(tmp_path / "good", base)
    wrong_base = _adapter(tmp_path / "wrong-base", other)
    too_big = _adapter(tmp_path / "big", base, rank=128)
    template = _adapter(tmp_path / "template", base)
    (template / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    cfg = load_serve_config(
        data={
            "models": [
                {
                    "id": "tiny",
                    "path": str(base),
                    "adapters": {
                        "good": str(good),
                        "wrong": str(wrong_base),
                        "big": str(too_big),
                        "tpl": str(template),
                        "none": str(tmp_path / "missing"),
                        "cloud": "s3://bucket/run",
                    },
                },
                {"id": "adapter-as-model", "path": str(good)},
                {"id": "nothing", "path": str(tmp_path / "nothing")},
            ]
        }
    )
    problems = check_sources(cfg)
    # the session's tiny models have head size 16, which vLLM's CPU backend refuses: said once per served model
    assert sum("attention head size is 16" in p for p in problems) == 1, problems
    problems = [p for p in problems if "attention head size" not in p]
    assert len(problems) == 6, problems
    text = "\n".join(problems)
    assert "adapters.wrong: trained on" in text and "which is not the served base" in text
    assert "adapters.big: rank 128 exceeds max_lora_rank 64" in text
    assert "adapters.tpl: trained with a chat template other than the base's" in text
    assert "adapters.none: no LoRA adapter at" in text
    assert "models[1].path:" in text and "is a LoRA adapter; serve it on its base" in text
    assert "models[2].path: no model at" in text
    assert "good" not in text.replace("/good", "")  # the matching adapter passes; URIs are checked where they are read


def test_rayft_serve_refuses_bad_input_before_starting_anything(tiny_model, tmp_path: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from rayft.cli import main

    base = tiny_model("llama")
    monkeypatch.delenv("RAYFT_API_KEY", raising=False)
    runner = CliRunner()
    on_gpu = tmp_path / "gpu.yaml"  # (on CPU its head size would be refused first)
    on_gpu.write_text(f"models: [{{id: tiny, path: {base}, resources: {{gpus: 1}}}}]\n")
    result = runner.invoke(main, ["serve", str(on_gpu)])
    assert result.exit_code == 2 and "no API key: set the environment variable RAYFT_API_KEY" in result.output
    config = tmp_path / "serve.yaml"
    config.write_text(f"models: [{{id: tiny, path: {base}, adapters: {{x: {tmp_path / 'missing'}}}}}]\n")
    result = runner.invoke(main, ["serve", str(config), "auth.required=false"])
    assert result.exit_code == 2 and "models[0].adapters.x: no LoRA adapter at" in result.output
    result = runner.invoke(main, ["serve", str(config), "--model", str(base)])
    assert result.exit_code == 2 and "one of them" in result.output
    result = runner.invoke(main, ["serve", "--model", str(base), "auth.required=false"])  # overrides after --model
    assert result.exit_code == 2 and "attention head size is 16" in result.output
