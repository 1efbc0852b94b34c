"""No traceback for any input: every CLI path turns a user's mistake into a message naming the file, key or
option, and exit code 2 (issue 19). Each runs in-process with click's CliRunner (no Ray cluster, no model),
except one real `rayft` process that checks what a user's terminal shows."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rayft.cli import main
from rayft.cli._common import EXIT_BAD_INPUT
from rayft_core.config import ModelConfig
from rayft_core.model.loader import ModelLoadError, check_model_path, hub_offline
from rayft_core.schema import ConfigError, apply_override, read_yaml

REPO = Path(__file__).resolve().parents[2]
BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"  # a PNG's first bytes: byte 0 is not UTF-8
RUN = {"model": {"name_or_path": "/nonexistent/model"}, "data": {"train": [{"path": "d.json", "format": "alpaca"}]}}
LF = {
    "model_name_or_path": "/nonexistent/model",
    "stage": "sft",
    "do_train": True,
    "finetuning_type": "lora",
    "dataset": "alpaca_en_demo",
    "template": "llama3",
    "output_dir": "saves/x",
}
NOWHERE = "nobody-rayft-test/no-such-model"  # a valid hub id that is in no cache


def _refused(result, *names: str) -> str:
    """Exit 2 through sys.exit (no exception escaped), the culprit named, no traceback."""
    assert result.exit_code == EXIT_BAD_INPUT, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    for name in names:
        assert name in result.output, (name, result.output)
    return result.output


def _cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def _write(path: Path, content: bytes | str | dict) -> Path:
    if isinstance(content, dict):
        content = yaml.safe_dump(content, sort_keys=False)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# ---------------------------------------------------------------------------- a. files that are not UTF-8 text


@pytest.mark.parametrize(
    "command", [["config", "validate"], ["train"], ["tune"], ["data", "preview"], ["infer"]], ids=" ".join
)
def test_binary_run_config(tmp_path, command):
    config = _write(tmp_path / "run.yaml", BINARY)
    after = ["-o", tmp_path / "out.jsonl"] if command == ["infer"] else []
    _refused(_cli(*command, config, *after), str(config), "not UTF-8 text (byte 0 is 0x89)")


def test_binary_sweep_space(tmp_path):
    space = _write(tmp_path / "space.yaml", BINARY)
    _refused(_cli("tune", _write(tmp_path / "run.yaml", RUN), "--space", space), str(space), "not UTF-8 text")


def test_binary_serving_config(tmp_path):
    config = _write(tmp_path / "serve.yaml", BINARY)
    _refused(_cli("serve", config), str(config), "invalid serving config", "not UTF-8 text")


def test_binary_predictions(tmp_path):
    predictions = _write(tmp_path / "predictions.jsonl", b'{"prediction": "a", "reference": "\xff"}\n')
    _refused(_cli("eval", "similarity", predictions), str(predictions), "not UTF-8 text (byte 34 is 0xff)")


@pytest.mark.parametrize("culprit", ["test/anatomy_test.csv", "dev/anatomy_dev.csv", "mapping.json"])
def test_binary_benchmark_files(tmp_path, culprit):
    task = tmp_path / "task"
    for split in ("dev", "test"):
        (task / split).mkdir(parents=True)
        _write(task / split / f"anatomy_{split}.csv", "What?,a,b,c,d,A\n")
    _write(task / culprit, BINARY)
    _refused(_cli("eval", "mc", "--model", tmp_path, "--task-dir", task), str(task / culprit), "not UTF-8 text")


def test_binary_llamafactory_yaml(tmp_path):
    lf = _write(tmp_path / "lf.yaml", BINARY)
    _refused(_cli("config", "import-llamafactory", lf), str(lf), "LLaMA-Factory YAML", "not UTF-8 text")


def test_llamafactory_detection_reads_through_read_yaml(tmp_path):
    """`rayft train lf.yaml` looks at the file to tell a LLaMA-Factory YAML from a rayft one."""
    lf = _write(tmp_path / "lf.yaml", yaml.safe_dump(LF) + "stage: dpo\n")
    _refused(_cli("config", "validate", lf), str(lf), "duplicate key 'stage' on lines")


@pytest.mark.parametrize(
    "content, says",
    [
        (None, "no such file"),
        (BINARY, "not UTF-8 text (byte 0 is 0x89)"),
        (b"a: 1\x00\n", "not valid YAML (unacceptable character #x0000"),
        (
            "model: [1\ndata: 2\n",
            "not valid YAML (while parsing a flow sequence, expected ',' or ']', but got ':'; line 2",
        ),
        ("- model\n- data\n", "the top level must be a mapping of sections, got list"),
        ("just words\n", "the top level must be a mapping of sections, got str"),
    ],
    ids=["missing", "binary", "nul", "bad-yaml", "list", "scalar"],
)
def test_read_yaml_names_the_file_and_the_problem(tmp_path, content, says):
    path = tmp_path / "run.yaml"
    if content is not None:
        _write(path, content)
    with pytest.raises(ConfigError) as e:
        read_yaml(path, "sweep space")
    assert str(e.value).startswith("invalid sweep space:")
    assert f"{path}: {says}" in str(e.value)
    assert "\n" not in e.value.problems[0]  # one line per problem, not PyYAML's several


def test_read_yaml_reads_empty_and_directory(tmp_path):
    assert read_yaml(_write(tmp_path / "empty.yaml", "")) == {}
    with pytest.raises(ConfigError, match="cannot read it"):
        read_yaml(tmp_path)


# ----------------------------------------------------------------------------- b. duplicate keys anywhere


def test_duplicate_top_level_section(tmp_path):
    config = _write(tmp_path / "run.yaml", yaml.safe_dump(RUN) + "train:\n  max_steps: 1\ntrain:\n  max_steps: 2\n")
    _refused(_cli("config", "validate", config), str(config), "duplicate key 'train' on lines 7 and 9")


@pytest.mark.parametrize(
    "text, key, lines",
    [
        ("train:\n  learning_rate: 1.0e-4\n  max_steps: 5\n  learning_rate: 2.0e-4\n", "learning_rate", (2, 4)),
        ("data:\n  train:\n    - {path: a.json, format: alpaca, format: sharegpt}\n", "format", (3, 3)),
        ("1: a\n1: b\n", "1", (1, 2)),
    ],
    ids=["nested", "flow", "int"],
)
def test_duplicate_keys_anywhere(tmp_path, text, key, lines):
    with pytest.raises(ConfigError, match=rf"duplicate key '?{key}'? on lines {lines[0]} and {lines[1]}"):
        read_yaml(_write(tmp_path / "run.yaml", text))


def test_merge_keys_may_be_overridden(tmp_path):
    text = "base: &b {max_steps: 1, learning_rate: 1.0e-4}\ntrain:\n  <<: *b\n  max_steps: 5\n"
    assert read_yaml(_write(tmp_path / "run.yaml", text))["train"] == {"max_steps": 5, "learning_rate": 1.0e-4}


def test_duplicate_keys_in_a_serving_config_and_a_space(tmp_path):
    serve = _write(tmp_path / "serve.yaml", "models:\n  - {id: a, path: /m}\nmodels: []\n")
    _refused(_cli("serve", serve), str(serve), "duplicate key 'models' on lines 1 and 3")
    space = _write(tmp_path / "space.yaml", "space:\n  tuning.rank: {choice: [8]}\n  tuning.rank: {choice: [16]}\n")
    _refused(
        _cli("tune", _write(tmp_path / "run.yaml", RUN), "--space", space), str(space), "duplicate key 'tuning.rank'"
    )


# ------------------------------------------------------------------------------------ c. overrides


@pytest.mark.parametrize("override", ["model.chat_template={{ bad", "train.learning_rate=[1", "tuning={a: 1, a: 2}"])
def test_override_that_is_not_yaml(tmp_path, override):
    out = _refused(_cli("config", "validate", _write(tmp_path / "run.yaml", RUN), override), f"override {override!r}")
    assert "put it in quotes" in out


def test_override_quoted_is_a_string():
    raw: dict = {}
    apply_override(raw, "model.chat_template='{{ bad'")
    assert raw == {"model": {"chat_template": "{{ bad"}}


# ---------------------------------------------------------------------------------- d. --space files


@pytest.mark.parametrize(
    "content, says",
    [
        ("space: [1\n", "not valid YAML"),
        ("- tuning.rank\n", "the top level must be a mapping of sections, got list"),
        ("tune: 3\n", "tune"),
    ],
    ids=["bad-yaml", "list", "tune-not-a-mapping"],
)
def test_bad_space_file(tmp_path, content, says):
    space = _write(tmp_path / "space.yaml", content)
    _refused(_cli("tune", _write(tmp_path / "run.yaml", RUN), "--space", space), str(space), says)


# ------------------------------------------------------------------- e. a model neither local nor reachable


@pytest.fixture
def no_cluster(monkeypatch):
    """The model is checked before Ray starts: starting a cluster fails the test instead."""
    import rayft.train
    import rayft.tune

    def refuse() -> None:
        raise AssertionError("a Ray cluster was started before the model was checked")

    monkeypatch.setattr(rayft.train, "connect", refuse)
    monkeypatch.setattr(rayft.tune, "connect", refuse)


@pytest.fixture
def online(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_hub_id_fails_at_once(monkeypatch, online, var):
    monkeypatch.setenv(var, "1")
    start = time.monotonic()
    with pytest.raises(
        ModelLoadError, match=rf"'{NOWHERE}' is not a local directory and the hub is offline \({var} is set\)"
    ):
        check_model_path(ModelConfig(name_or_path=NOWHERE))
    assert time.monotonic() - start < 2


def test_unreachable_hub_fails_within_seconds(monkeypatch, online):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens there
    start = time.monotonic()
    with pytest.raises(
        ModelLoadError, match=rf"'{NOWHERE}' is not a local directory, and the Hugging Face hub cannot be reached"
    ):
        check_model_path(ModelConfig(name_or_path=NOWHERE))
    assert time.monotonic() - start < 5


def test_invalid_hub_id_that_is_no_directory(online):
    with pytest.raises(ModelLoadError, match="'no such dir/x y' is not a local directory .* nor a hub id"):
        check_model_path(ModelConfig(name_or_path="no such dir/x y"))


def test_cached_hub_id_passes_offline(monkeypatch, tmp_path, online):
    import huggingface_hub.constants

    snapshot = tmp_path / "models--nobody-rayft-test--no-such-model" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_model_path(ModelConfig(name_or_path=NOWHERE))  # transformers loads it from the cache


def test_offline_values(monkeypatch, online):
    assert hub_offline("TRANSFORMERS_OFFLINE") is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert hub_offline() is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    assert hub_offline() == "HF_HUB_OFFLINE"


@pytest.mark.parametrize("command", ["train", "tune"])
def test_cli_hub_id_offline(monkeypatch, tmp_path, online, no_cluster, command):
    """`rayft tune examples/tune_lora.yaml` (a hub id) offline: one line, not retries and a 40-line OSError."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(REPO)
    config = "examples/tune_lora.yaml" if command == "tune" else "examples/sft_lora.yaml"
    _refused(
        _cli(command, config, f"output.storage_path={tmp_path}"),
        "model.name_or_path: 'Qwen/Qwen2.5-0.5B-Instruct' is not a local directory and the hub is offline",
    )


# ------------------------------------------------------------------------- f. numeric options out of range


@pytest.mark.parametrize(
    "option, value",
    [
        ("--temperature", "-1"),
        ("--engines", "0"),
        ("--batch-size", "0"),
        ("--max-new-tokens", "0"),
        ("--top-p", "1.5"),
        ("--top-p", "0"),
    ],
)
def test_infer_options(tmp_path, option, value):
    _refused(
        _cli("infer", _write(tmp_path / "run.yaml", RUN), "-o", tmp_path / "out.jsonl", option, value),
        f"Invalid value for '{option}'",
        value,
    )


@pytest.mark.parametrize("option, value", [("--temperature", "-0.5"), ("--max-new-tokens", "0"), ("--top-p", "1.5")])
def test_chat_options(tmp_path, option, value):
    _refused(_cli("chat", tmp_path, option, value), f"Invalid value for '{option}'", value)


@pytest.mark.parametrize("option, value", [("--n-shot", "-1"), ("--batch-size", "0")])
def test_eval_options(tmp_path, option, value):
    _refused(
        _cli("eval", "mc", "--model", tmp_path, "--task-dir", tmp_path, option, value),
        f"Invalid value for '{option}'",
        value,
    )


def test_demo_workers():
    _refused(_cli("demo", "--workers", "0"), "Invalid value for '--workers'")


# ------------------------------------------------------------------------------- g. unfinished run directory


def test_export_of_an_unfinished_run(tmp_path):
    failed = tmp_path / "failed-run"
    failed.mkdir()
    _write(failed / "rayft_run.yaml", RUN)  # written when training starts: all a failed run may hold
    _refused(
        _cli("export", failed, "-o", tmp_path / "exported"),
        str(failed),
        "holds no trained model",
        "the run did not finish",
    )
    assert not (tmp_path / "exported").exists()


def test_export_of_a_directory_that_is_no_run(tmp_path):
    _refused(_cli("export", tmp_path, "-o", tmp_path / "exported"), str(tmp_path), "holds no rayft_run.yaml")


# ---------------------------------------------------------------------------- what a terminal shows


def test_real_process_prints_one_error_not_a_traceback(tmp_path):
    config = _write(tmp_path / "run.yaml", BINARY)
    rayft = Path(sys.executable).parent / "rayft"
    done = subprocess.run([str(rayft), "config", "validate", str(config)], capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert f"error: {config}: invalid run config:\n  - {config}: not UTF-8 text" in done.stderr, done.stderr


def test_demo_model_that_is_not_a_model_directory(tmp_path):
    output = tmp_path / "demo"
    _refused(_cli("demo", "--model", tmp_path, "--output", output), f"--model {tmp_path}", "no config.json")
    assert not output.exists()  # refused before it claimed the output directory
