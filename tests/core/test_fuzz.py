"""Generated bad input, a few hundred cases: configs (shapes, types, keys, encodings, duplicates, overrides),
dataset rows (every kind of damage, in every format) and CLI options. Each ends in exit 2 or a counted bad
row whose message names the culprit; none ends in a traceback, and none deletes a file.

Configs and options go through the real `rayft` command in-process (click's runner); rows go through the
function every Ray Data task runs on a block (rayft.data._encode: read, align, tokenize), in-process.
"""

from __future__ import annotations

import json
import random
import typing
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel

from rayft.cli import main
from rayft_core import config as cfg
from rayft_core.stage_config import StageConfig

MINIMAL = {"model": {"name_or_path": "m"}, "data": {"train": [{"path": "d.json", "format": "alpaca"}]}}
WRONG = {"wrong": ["type"]}  # a mapping: no scalar or list field of the schema accepts it


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _exits_2_naming(args: list[str], culprit: str, root: Path) -> None:
    before = _snapshot(root)
    result = CliRunner().invoke(main, args)
    output = result.output
    assert isinstance(result.exception, SystemExit), f"{args}: {result.exception!r}\n{output}"
    assert result.exit_code == 2, f"{args}: exit {result.exit_code}\n{output}"
    assert "Traceback" not in output and culprit in output, f"{args}: {culprit!r} not named in:\n{output}"
    assert _snapshot(root) == before, f"{args} changed files it was not asked to write"


# ----------------------------------------------------------------------------- configs


def _scalar_fields(model: type[BaseModel], prefix: str) -> list[str]:
    """Dotted paths of the fields whose values are scalars or lists of scalars (no mappings accepted)."""
    out = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        args = typing.get_args(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            continue  # a sub-section: its own fields are listed where it is used
        if (
            annotation is Any
            or dict in (annotation, typing.get_origin(annotation))
            or any(
                a is Any or typing.get_origin(a) is dict or (isinstance(a, type) and issubclass(a, BaseModel))
                for a in args
            )
        ):
            continue
        if typing.get_origin(annotation) is Literal and len(args) == 1:
            continue  # a union's tag: covered by the tag cases
        out.append(f"{prefix}{name}")
    return out


def _sections() -> list[tuple[dict, str, type[BaseModel]]]:
    """(the base config, where the section sits, its model) for every section and union member."""
    out: list[tuple[dict, str, type[BaseModel]]] = []
    for name, model in (
        ("model", cfg.ModelConfig),
        ("data", cfg.DataConfig),
        ("train", cfg.TrainConfig),
        ("checkpoint", cfg.CheckpointConfig),
        ("deepspeed", cfg.DeepSpeedConfig),
        ("cluster", cfg.ClusterConfig),
        ("output", cfg.OutputConfig),
    ):
        out.append(({}, name, model))
    for member in typing.get_args(typing.get_args(cfg.TuningConfig)[0]):
        out.append(({"tuning": {"method": member.model_fields["method"].default}}, "tuning", member))
    for member in typing.get_args(typing.get_args(StageConfig)[0]):
        out.append(({"stage": {"name": member.model_fields["name"].default}}, "stage", member))
    out.append(({}, "data.train[0]", cfg.DatasetSpec))
    return out


def _config_cases() -> list[tuple[str, Any, str]]:
    """(case id, the config's content (a mapping, or bytes for a raw file), what the error must name)."""
    cases = []
    for base, where, model in _sections():
        for path in _scalar_fields(model, ""):
            raw = json.loads(json.dumps({**MINIMAL, **base}))
            if where == "data.train[0]":
                raw["data"]["train"][0][path] = WRONG
            else:
                raw.setdefault(where, {})[path] = WRONG
            cases.append((f"type-{where}.{path}-{model.__name__}", raw, f"{where}.{path}"))
            typo = path[:-1] + ("x" if path[-1] != "x" else "y")
            raw = json.loads(json.dumps({**MINIMAL, **base}))
            target = raw["data"]["train"][0] if where == "data.train[0]" else raw.setdefault(where, {})
            target[typo] = 1
            cases.append((f"typo-{where}.{typo}-{model.__name__}", raw, f"{where}.{typo}: unknown key"))
    for section in ("model", "train", "data", "output", "cluster", "deepspeed"):
        for value in (5, "text", [1, 2]):
            raw = {**MINIMAL, section: value}
            cases.append((f"shape-{section}-{type(value).__name__}", raw, section))
    cases += [
        ("top-list", b"- model: m\n", "top level must be a mapping"),
        ("top-scalar", b"just text\n", "top level must be a mapping"),
        ("tabs", b"model:\n\tname_or_path: m\n", "not valid YAML"),
        ("unclosed", b"model: {name_or_path: m\n", "not valid YAML"),
        ("utf16", "model:\n  name_or_path: m\n".encode("utf-16"), "not UTF-8"),
        ("latin1", "model:\n  name_or_path: caf\xe9\n".encode("latin-1"), "not UTF-8"),
        ("nul", b"model:\x00 m\n", "not valid YAML"),
        (
            "dup-top",
            b"model: {name_or_path: m}\ntrain: {max_steps: 1}\ntrain: {max_steps: 2}\n",
            "duplicate key 'train'",
        ),
        ("dup-nested", b"model:\n  name_or_path: m\n  name_or_path: n\n", "duplicate key 'name_or_path'"),
        ("dup-list-item", b"data:\n  train:\n    - {path: a, path: b}\n", "duplicate key 'path'"),
        ("unknown-section", {**MINIMAL, "trian": {}}, "trian: unknown key (did you mean 'train'?)"),
        ("unknown-tuning", {**MINIMAL, "tuning": "loar"}, "did you mean 'lora'"),
        ("unknown-stage", {**MINIMAL, "stage": "sfft"}, "did you mean 'sft'"),
        ("name-dotdot", {**MINIMAL, "output": {"name": ".."}}, "output.name"),
        ("name-slash", {**MINIMAL, "output": {"name": "a/../../b"}}, "output.name"),
        ("name-empty", {**MINIMAL, "output": {"name": ""}}, "output.name"),
    ]
    rng = random.Random(19)
    for i in range(8):  # random binary: never decoded as a config
        cases.append((f"binary-{i}", bytes([0xFF, 0xFE, 0x00]) + rng.randbytes(64), "run.yaml"))
    return cases


CONFIG_CASES = _config_cases()


@pytest.mark.parametrize("content, culprit", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config(tmp_path, content, culprit):
    path = tmp_path / "run.yaml"
    path.write_bytes(content if isinstance(content, bytes) else yaml.safe_dump(content).encode())
    _exits_2_naming(["config", "validate", str(path), "--schema-only"], culprit, tmp_path)


OVERRIDES = [
    ("model.chat_template={{ bad", "override 'model.chat_template={{ bad'"),
    ("train.learning_rate", "expected key.path=value"),
    ("train.learning_rate=[1, 2", "override 'train.learning_rate=[1, 2'"),
    ("train.learning_rate=-1", "train.learning_rate"),
    ("train.max_steps=abc", "train.max_steps"),
    ("tuning.rank=0", "tuning.rank"),
    ("train.learning_rate.x=1", "train.learning_rate"),
    ("output.name=..", "output.name"),
    ("nosuch.key=1", "nosuch: unknown key"),
    ("cluster.num_workers=0", "cluster.num_workers"),
    ("data.train={a: 1}", "data.train"),
    ("model.name_or_path={a: {b: 1}}", "model.name_or_path"),
]


@pytest.mark.parametrize("override, culprit", OVERRIDES, ids=[o for o, _ in OVERRIDES])
def test_bad_override(tmp_path, override, culprit):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    _exits_2_naming(["config", "validate", str(path), override, "--schema-only"], culprit, tmp_path)


def test_the_cases_cover_the_schema():
    """Every section and tuning method has cases of both kinds, and there are a few hundred in all."""
    ids = " ".join(c[0] for c in CONFIG_CASES)
    for name in (
        "model.",
        "data.",
        "train.",
        "checkpoint.",
        "deepspeed.",
        "cluster.",
        "output.",
        "data.train[0].",
        "FreezeTuning",
        "LoraTuning",
        "GaloreTuning",
        "SftStage",
        "DpoStage",
        "KtoStage",
        "PpoStage",
        "GrpoStage",
    ):
        assert f"type-{name}" in ids or name in ids, name
    assert len(CONFIG_CASES) + len(OVERRIDES) + len(ROW_CASES) + len(OPTION_CASES) >= 200


# ----------------------------------------------------------------------------- dataset rows

GOOD = {
    "alpaca": ({"instruction": "What is 2+2?", "input": "", "output": "Four."}, {"format": "alpaca"}, "sft", "output"),
    "sharegpt": (
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
        {"format": "sharegpt"},
        "sft",
        "conversations",
    ),
    "openai": (
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
        {"format": "openai", "columns": {"messages": "messages"}},
        "sft",
        "messages",
    ),
    "ranking": (
        {"instruction": "Pick one", "input": "", "chosen": "Good.", "rejected": "Bad."},
        {"format": "alpaca", "ranking": True},
        "dpo",
        "chosen",
    ),
    "kto": (
        {"instruction": "Say hi", "input": "", "output": "Hi!", "label": True},
        {"format": "alpaca", "columns": {"kto_tag": "label"}},
        "kto",
        "output",
    ),
    "text": ({"text": "The quick brown fox."}, {"format": "text"}, "pt", "text"),
}


def _damages(row: dict, main_key: str) -> list[tuple[str, Any]]:
    """(kind, the damaged row as JSON text or raw bytes) for one good row."""

    def with_main(value: Any) -> str:
        return json.dumps({**row, main_key: value})

    out = [
        ("missing-column", json.dumps({k: v for k, v in row.items() if k != main_key})),
        ("null", with_main(None)),
        ("number", with_main(42)),
        ("mapping", with_main({"a": 1})),
        ("not-an-object", json.dumps([row])),
        ("a-string-row", json.dumps("just text")),
        ("invalid-json", json.dumps(row)[:-3]),
        ("nested-too-deeply", "[" * 100_000 + "]" * 100_000),
        ("undecodable", b"\xff\xfe" + json.dumps(row).encode()),
    ]
    main_value = row[main_key]
    if isinstance(main_value, str):
        out += [
            ("lone-surrogate", json.dumps({**row, main_key: "bad \ud800 text"}, ensure_ascii=True)),
            ("empty", with_main("")),
            ("list", with_main(["a", "b"])),
        ]
    else:  # a list of turns
        turn = dict(main_value[1])
        content = "value" if "value" in turn else "content"
        out += [
            (
                "lone-surrogate",
                json.dumps({**row, main_key: [main_value[0], {**turn, content: "x \udfff"}]}, ensure_ascii=True),
            ),
            ("empty-conversation", with_main([])),
            ("turn-not-a-mapping", with_main([main_value[0], "hello"])),
            (
                "unknown-role",
                with_main([{**main_value[0], ("from" if "from" in turn else "role"): "alien"}, main_value[1]]),
            ),
            ("turn-without-text", with_main([main_value[0], {k: v for k, v in turn.items() if k != content}])),
        ]
    return out


ROW_CASES = [(fmt, kind, damaged) for fmt, (row, _, _, key) in GOOD.items() for kind, damaged in _damages(row, key)]


@pytest.fixture(scope="module")
def encode(tiny_model, tmp_path_factory):
    """encode(format, file bytes, file name) -> the block a Ray Data task returns for that file."""
    from rayft.data import _encode
    from rayft.sources import rows_of_file
    from tests.helpers import run_config

    out = tmp_path_factory.mktemp("fuzz-runs")

    def run(fmt: str, data: bytes, name: str) -> pa.Table:
        _, spec, stage, _ = GOOD[fmt]
        run = run_config(
            tiny_model("llama"),
            [{"path": name, **spec}],
            out,
            "fuzz",
            stage=stage,
            model={"name_or_path": str(tiny_model("llama")), "template": "qwen"},
        )
        rows = rows_of_file({"path": name, "bytes": data})
        block = pa.Table.from_pylist(
            rows,
            schema=pa.schema(
                [("path", pa.string()), ("row", pa.int64()), ("json", pa.string()), ("error", pa.string())]
            ),
        )
        return _encode(block, run.model_dump_json(), run.data.train[0].model_dump_json(), 0)

    return run


@pytest.mark.parametrize("fmt, kind, damaged", ROW_CASES, ids=[f"{f}-{k}" for f, k, _ in ROW_CASES])
def test_bad_row(encode, fmt, kind, damaged):
    """A damaged row between two good ones is one counted bad row naming its file and row; the others train."""
    good = json.dumps(GOOD[fmt][0]).encode()
    middle = damaged if isinstance(damaged, bytes) else damaged.encode("utf-8", "surrogatepass")
    name = f"/data/{fmt}.jsonl"
    block = encode(fmt, b"\n".join([good, middle, good]) + b"\n", name)
    errors = [e for e in block.column("error").to_pylist() if e is not None]
    assert len(errors) == 1 and errors[0].startswith(f"{name}: row 2: "), errors
    assert sum(block.column("num_examples").to_pylist()) == 2  # both good rows are still there (perhaps packed)
    errors[0].encode("utf-8")  # the message itself is storable text


FILE_CASES = [
    ("json-not-an-array", "alpaca", "d.json", b'{"instruction": "q"}', "d.json: row 0: wrong type"),
    ("json-truncated", "alpaca", "d.json", b'[{"instruction": "q"', "d.json: row 0: invalid JSON"),
    ("json-latin1", "alpaca", "d.json", '[{"instruction": "caf\xe9"}]'.encode("latin-1"), "d.json: row 0: undecodable"),
    ("parquet-corrupt", "alpaca", "d.parquet", b"PAR1 this is not parquet", "d.parquet: row 0: unreadable file"),
    ("parquet-empty-file", "alpaca", "d.parquet", b"", "d.parquet: row 0: unreadable file"),
    ("csv-unclosed-quote", "alpaca", "d.csv", b'instruction,output\n"q,a\n', "d.csv"),
]


@pytest.mark.parametrize("fmt, name, data, culprit", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_bad_file(encode, fmt, name, data, culprit):
    block = encode(fmt, data, name)
    errors = [e for e in block.column("error").to_pylist() if e is not None]
    assert errors and any(culprit in e for e in errors), errors


# ----------------------------------------------------------------------------- options


def _option_cases() -> list[tuple[list[str], str]]:
    run, model, predictions = "RUN", "MODEL", "PRED"
    cases = []
    for option, values in {
        "--temperature": ["-1", "nan-ish"],
        "--top-p": ["0", "1.5"],
        "--max-new-tokens": ["0", "-5"],
        "--batch-size": ["0"],
        "--engines": ["0", "-1"],
    }.items():
        for value in values:
            cases.append((["infer", run, "-o", "out.jsonl", option, value], option))
    for option, value in (("--temperature", "-0.5"), ("--top-p", "2"), ("--max-new-tokens", "0")):
        cases.append((["chat", model, option, value], option))
    cases += [
        (["demo", "--workers", "0"], "--workers"),
        (["eval", "mc", "--model", model, "--task-dir", model, "--n-shot", "-1"], "--n-shot"),
        (["eval", "mc", "--model", model, "--task-dir", model, "--batch-size", "0"], "--batch-size"),
        (["export", model, "-o", "x", "--dtype", "int3"], "--dtype"),
        (["train", "nowhere.yaml"], "nowhere.yaml"),
        (["config", "validate", "nowhere.yaml"], "nowhere.yaml"),
        (["data", "prepare", run, "-o", "."], "holds files rayft did not write"),
        (["data", "prepare", run, "-o", ".", "--overwrite"], "holds files rayft did not write"),
        (["export", model, "-o", model], "export writes a new directory"),
        (["infer", run, "-o", run], "is this command's input"),
        (["infer", run, "-o", "keep.txt"], "keep.txt already exists"),
        (["infer", run, "-o", "."], "is a directory"),
        (["eval", "similarity", predictions, "--output", predictions, "--overwrite"], "is this command's input"),
        (["eval", "similarity", predictions, "--output", "keep.txt"], "keep.txt already exists"),
        (["config", "import-llamafactory", "lf.yaml", "-o", "lf.yaml", "--overwrite"], "is this command's input"),
        (["config", "import-llamafactory", "lf.yaml", "-o", "keep.txt"], "keep.txt already exists"),
        (["k8s", "render", run, "-o", run, "--overwrite"], "is this command's input"),
        (
            ["infer", run, "data.eval=[{path: /nowhere/e.json}]", "-o", "out.jsonl"],
            "no data files at '/nowhere/e.json'",
        ),
        (["data", "preview", run, "data.train=[{path: /nowhere/t.json}]"], "no data files at '/nowhere/t.json'"),
        (["data", "prepare", run, "-o", "new", "model.name_or_path=/nowhere/m"], "model.name_or_path"),
    ]
    return cases


OPTION_CASES = _option_cases()


@pytest.mark.parametrize("args, culprit", OPTION_CASES, ids=[" ".join(a[:4]) for a, _ in OPTION_CASES])
def test_bad_option(tmp_path, monkeypatch, tiny_model, args, culprit):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("a user's file")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({**MINIMAL, "model": {"name_or_path": str(tiny_model("llama"))}}))
    (tmp_path / "pred.jsonl").write_text('{"prediction": "a", "reference": "a"}\n')
    (tmp_path / "lf.yaml").write_text(yaml.safe_dump({"model_name_or_path": "m", "dataset": "alpaca_en_demo"}))
    args = [{"RUN": "run.yaml", "MODEL": str(tiny_model("llama")), "PRED": "pred.jsonl"}.get(a, a) for a in args]
    _exits_2_naming(args, culprit, tmp_path)
