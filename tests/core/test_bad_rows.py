"""Bad rows stay rows (issue 19): odd input is read as its format defines it, or becomes a counted bad row
named by file and row (or a UserInputError naming the file), never a crash of a Ray task or the run."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayft.sources import resolve_files, rows_of_file
from rayft_core.config import DatasetSpec
from rayft_core.data.formats import RowError, align_row
from rayft_core.data.registry import DatasetError, resolve_spec
from rayft_core.stage_config import section
from tests.helpers import run_config


def spec(**kw) -> DatasetSpec:
    return DatasetSpec.model_validate({"path": "x.json", **kw})


def read(path: str, data: bytes) -> list[dict]:
    """rows_of_file, then through Arrow as Ray's blocks take it (a str Arrow refuses would end the task)."""
    return pa.Table.from_pylist(rows_of_file({"path": path, "bytes": data})).to_pylist()


def align(raw: dict, fmt: str = "alpaca", stage: str = "sft") -> dict:
    assert raw["error"] is None, raw["error"]
    return align_row(
        {**json.loads(raw["json"]), "path": raw["path"], "__row__": raw["row"]}, spec(format=fmt), section(stage)
    )


def test_lone_surrogates_are_bad_rows_naming_the_field():
    """JSON "\\ud800" decodes to a str no tokenizer or Arrow column takes: a bad row naming its field."""
    lines = [
        {"instruction": "q", "output": "a"},
        {"instruction": "q \ud800", "output": "a"},
        {"instruction": "q", "output": "a", "unused": "\udc00"},
    ]  # a column the row does not use is no harm
    rows = read("d.jsonl", "\n".join(json.dumps(r) for r in lines).encode())  # json.dumps escapes: \ud800
    assert align(rows[0])["messages"][-1] == {"role": "assistant", "content": "a"}
    with pytest.raises(RowError, match=r"^d\.jsonl: row 2: invalid text: instruction holds a lone surrogate") as e:
        align(rows[1])
    assert e.value.reason == "invalid text"
    assert align(rows[2])["messages"][0]["content"] == "q"

    conversation = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "\ud800"}]}
    with pytest.raises(RowError, match=r"row 0: invalid text: conversations\[1\]\.value holds"):
        align(read("c.json", json.dumps([conversation]).encode())[0], "sharegpt")  # a .json array, through Arrow
    call = json.dumps({"name": "f", "arguments": {"x": "\ud800"}})  # spelled inside JSON text: found once parsed
    conversation = {
        "conversations": [
            {"from": "human", "value": "q"},
            {"from": "function_call", "value": call},
            {"from": "observation", "value": "1"},
            {"from": "gpt", "value": "a"},
        ]
    }
    with pytest.raises(RowError, match=r"messages\[1\]\.tool_calls\[0\]\.function\.arguments\.x holds"):
        align(read("c.jsonl", json.dumps(conversation).encode())[0], "sharegpt")


def test_row_errors_quoting_a_surrogate_are_still_text():
    """An error message goes into an Arrow column: a surrogate quoted from the row is written escaped."""
    with pytest.raises(RowError) as e:
        align_row({"\ud800": "x", "output": "a", "path": "d.jsonl", "__row__": 1}, spec(), section("sft"))
    assert e.value.reason == "missing column" and "\\ud800" in str(e.value)
    pa.array([str(e.value)])


def test_parquet_empty_is_no_rows_and_corrupt_is_a_named_bad_row(tmp_path):
    pq.write_table(pa.table({"instruction": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    assert read("empty.parquet", (tmp_path / "empty.parquet").read_bytes()) == []
    pq.write_table(pa.table({"instruction": ["q"] * 50, "output": ["a"] * 50}), tmp_path / "full.parquet")
    whole = (tmp_path / "full.parquet").read_bytes()
    for data, why in (
        (b"", "Parquet file size is 0 bytes"),
        (b"not parquet at all", "magic bytes not found"),
        (whole[: len(whole) // 2], ""),
    ):
        [row] = read("data/p.parquet", data)
        assert row["json"] is None and row["error"].startswith(
            "data/p.parquet: row 0: unreadable file: not a readable Parquet file, none of its rows are read ("
        )
        assert why in row["error"]


def test_csv_fields_over_the_csv_modules_limit_are_read():
    big = "x" * (csv.field_size_limit() * 2)
    rows = read("d.csv", f"instruction,output\nq,{big}\nq2,a2\n".encode())
    assert [json.loads(r["json"])["output"] for r in rows] == [big, "a2"] and [r["row"] for r in rows] == [2, 3]


def test_csv_the_parser_rejects_is_a_named_bad_row(monkeypatch):
    """Should the csv module still refuse a row (here: a limit lowered below a field), the row is named."""
    real, before = csv.field_size_limit, csv.field_size_limit()
    monkeypatch.setattr(csv, "field_size_limit", lambda *new: real(15) if new else real())
    try:
        rows = read("d.csv", b"instruction,output\nq,a\nq,a much longer answer\nq,a\n")
    finally:
        real(before)
    assert rows[0]["error"] is None and rows[1]["row"] == 3
    assert (
        rows[1]["error"]
        == "d.csv: row 3: invalid CSV: field larger than field limit (15); the rows after it are not read"
    )


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.csv", "d.txt"])
def test_a_utf8_bom_is_read_not_a_bad_row(name):
    body = {
        "d.jsonl": '{"instruction": "q", "output": "a"}\n',
        "d.json": '[{"instruction": "q", "output": "a"}]',
        "d.csv": "instruction,output\nq,a\n",
        "d.txt": "q\n",
    }[name]
    [row] = read(name, b"\xef\xbb\xbf" + body.encode())
    assert row["error"] is None and next(iter(json.loads(row["json"]).values())) == "q"


@pytest.mark.parametrize(
    "entry, message",
    [
        ("alpaca.json", "entry 'a': must be an object describing the dataset, .*; got \"alpaca.json\""),
        (["alpaca.json"], r"entry 'a': must be an object describing the dataset, .*; got \[\"alpaca.json\"\]"),
        (None, "entry 'a': must be an object describing the dataset, .*; got null"),
        ({"file_name": ["a.json"]}, r"entry 'a': file_name must be a string, got \[\"a.json\"\]"),
        (
            {"file_name": "a.json", "columns": "instruction"},
            "entry 'a': columns must be an object, got \"instruction\"",
        ),
    ],
)
def test_dataset_info_entries_that_are_not_objects(tmp_path, entry, message):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"a": entry}))
    with pytest.raises(DatasetError, match=f"^{tmp_path / 'dataset_info.json'} {message}"):
        resolve_spec(DatasetSpec(dataset="a"), str(tmp_path), "data.train[0]")


def test_dataset_info_with_a_bom_reads(tmp_path):
    (tmp_path / "dataset_info.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"a": {"file_name": "a.json"}}).encode())
    assert resolve_spec(DatasetSpec(dataset="a"), str(tmp_path), "k").path == str(tmp_path / "a.json")


def test_an_existing_path_with_glob_characters_is_that_file(tmp_path):
    for name in ("data[1].jsonl", "data1.jsonl", "a*.jsonl", "ab.jsonl", "q?.jsonl", "qx.jsonl"):
        (tmp_path / name).write_text("{}\n")
    for name in ("data[1].jsonl", "a*.jsonl", "q?.jsonl"):
        assert resolve_files(str(tmp_path / name), "k") == [str(tmp_path / name)]
    assert resolve_files(str(tmp_path / "data[12].jsonl"), "k") == [
        str(tmp_path / "data1.jsonl")
    ]  # no such file: a glob
    assert resolve_files(str(tmp_path / "a?.jsonl"), "k") == [str(tmp_path / "a*.jsonl"), str(tmp_path / "ab.jsonl")]


def test_an_existing_url_with_glob_characters_is_that_file(s3_bucket):
    import pyarrow.fs as pafs

    s3, _ = pafs.FileSystem.from_uri(f"s3://{s3_bucket}")
    for name in ("a*.jsonl", "ab.jsonl"):
        with s3.open_output_stream(f"{s3_bucket}/globs/{name}") as f:
            f.write(b"{}\n")
    assert resolve_files(f"s3://{s3_bucket}/globs/a*.jsonl", "k") == [f"s3://{s3_bucket}/globs/a*.jsonl"]
    assert resolve_files(f"s3://{s3_bucket}/globs/a?.jsonl", "k") == [
        f"s3://{s3_bucket}/globs/a*.jsonl",
        f"s3://{s3_bucket}/globs/ab.jsonl",
    ]


OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {"name": "weather", "description": "d", "parameters": {"type": "object", "properties": {}}},
    }
]


def test_openai_tool_calls_null_content_and_developer_role():
    """OpenAI's own shapes read as the sharegpt function_call/observation turns read: the same standard row."""
    openai_row = {
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
                    {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Rome"}'}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "20C"},  # one tool message per call (parallel calls)
            {"role": "tool", "tool_call_id": "c2", "content": "25C"},
            {"role": "assistant", "content": "Paris 20C, Rome 25C."},
        ],
        "tools": json.dumps(OPENAI_TOOLS),
    }
    out = align_row(openai_row, spec(format="openai", columns={"messages": "messages"}), section("sft"))
    calls = [{"name": "weather", "arguments": {"city": c}} for c in ("Paris", "Rome")]
    sharegpt_row = {
        "system": "Be brief.",
        "tools": json.dumps(OPENAI_TOOLS),
        "conversations": [
            {"from": "human", "value": "Weather in Paris and Rome?"},
            {"from": "function_call", "value": json.dumps(calls)},
            {"from": "observation", "value": "20C"},
            {"from": "observation", "value": "25C"},  # not alternating: refused
            {"from": "gpt", "value": "Paris 20C, Rome 25C."},
        ],
    }
    with pytest.raises(RowError, match="roles out of order"):
        align_row(sharegpt_row, spec(format="sharegpt"), section("sft"))
    sharegpt_row["conversations"][2:4] = [{"from": "observation", "value": "20C"}]
    expected = align_row(sharegpt_row, spec(format="sharegpt"), section("sft"))
    assert out["messages"][:3] == expected["messages"][:3] and out["tools"] == expected["tools"]
    assert out["messages"][3:] == [
        {"role": "tool", "content": "20C"},
        {"role": "tool", "content": "25C"},
        {"role": "assistant", "content": "Paris 20C, Rome 25C."},
    ]
    assert out["messages"][0] == {"role": "system", "content": "Be brief."}

    said = {"role": "assistant", "content": "Let me look.", "tool_calls": openai_row["messages"][2]["tool_calls"][:1]}
    row = {"messages": [{"role": "user", "content": "q"}, said]}
    assert align_row(row, spec(format="openai", columns={"messages": "messages"}), section("sft"))["messages"][-1] == {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}],
    }
    for bad, reason in (
        ({"role": "assistant", "content": None}, "missing column"),
        ({"role": "assistant", "content": None, "tool_calls": [{"name": "f"}]}, "wrong type"),
    ):
        with pytest.raises(RowError, match=rf"^d\.jsonl: row 4: {reason}: "):
            align_row(
                {"messages": [{"role": "user", "content": "q"}, bad], "path": "d.jsonl", "__row__": 4},
                spec(format="openai", columns={"messages": "messages"}),
                section("sft"),
            )


def test_openai_content_parts_are_text_and_other_parts_are_named_bad_rows():
    openai = spec(format="openai", columns={"messages": "messages"})
    parts = [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]
    row = {
        "messages": [
            {"role": "user", "content": parts},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
        ]
    }
    assert align_row(row, openai, section("sft"))["messages"] == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello"},
    ]
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    for content, reason in (
        ([*parts, image], "unsupported content: rayft trains on text; this turn has image_url parts"),
        ([{"type": "text", "text": 5}], "wrong type"),
        (["plain"], "wrong type"),
    ):
        bad = {"messages": [{"role": "user", "content": content}, row["messages"][1]], "path": "d.jsonl", "__row__": 7}
        with pytest.raises(RowError, match=rf"^d\.jsonl: row 7: {reason}"):
            align_row(bad, openai, section("sft"))


def test_openai_tool_turns_render_with_a_tool_template(tokenizer, workdir):
    from rayft_core.data.templates import TEMPLATES
    from rayft_core.data.tokenize import split_turns

    tok = tokenizer.__class__.from_pretrained(workdir / "tokenizer")
    tok.chat_template = TEMPLATES["qwen"]
    row = {
        "messages": [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": str(i), "type": "function", "function": {"name": "weather", "arguments": "{}"}}
                    for i in range(2)
                ],
            },
            {"role": "tool", "content": "20C"},
            {"role": "tool", "content": "25C"},
            {"role": "assistant", "content": "ok"},
        ]
    }
    out = align_row(row, spec(format="openai", columns={"messages": "messages"}), section("sft"))
    (_, call), (results, answer) = split_turns(tok, out["messages"], OPENAI_TOOLS)
    assert call.count("<tool_call>") == 2 and results.count("<tool_response>") == 2 and answer.startswith("ok")


@pytest.mark.usefixtures("ray_cluster")
def test_odd_files_through_ray_are_counted_and_named(tiny_model, workdir, tmp_path):
    """On the session Ray cluster: every case above in one run, read by Ray's tasks; none ends a task."""
    from rayft.data import build_run_data
    from rayft_core.data.formats import DataError

    good = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(4)]
    folder = tmp_path / "mixed"
    folder.mkdir()
    with_surrogate = [*good, {**good[0], "output": "\ud800"}]
    (folder / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + "\n".join(map(json.dumps, with_surrogate)).encode())
    (folder / "array.json").write_text(json.dumps(good + [{**good[0], "instruction": "\udc00"}]))
    (folder / "long.csv").write_text("instruction,output\n" + f"q,{'long ' * 40_000}\n" + "q,a\n")
    pq.write_table(pa.table({"instruction": pa.array([], pa.string())}), folder / "empty.parquet")
    (folder / "corrupt.parquet").write_bytes(b"not parquet")
    literal = tmp_path / "part[1].jsonl"
    literal.write_text("\n".join(map(json.dumps, good)))
    (tmp_path / "part1.jsonl").write_text("\n".join(map(json.dumps, good * 10)))  # what the glob would read

    run = run_config(
        tiny_model("llama"), [{"path": str(folder)}, {"path": str(literal)}], workdir / "data-runs", "bad-rows"
    )
    with pytest.raises(DataError) as e:
        build_run_data(run)
    msg = str(e.value)
    assert "3 unusable rows (2 invalid text, 1 unreadable file)" in msg, msg
    assert f"{folder / 'bom.jsonl'}: row 5: invalid text: output holds a lone surrogate" in msg
    assert f"{folder / 'array.json'}: row 4: invalid text: instruction holds a lone surrogate" in msg
    assert f"{folder / 'corrupt.parquet'}: row 0: unreadable file: not a readable Parquet file" in msg
    run.data.max_bad_fraction = 0.5
    data = build_run_data(run)
    assert [d.examples for d in data.report.datasets] == [4 + 4 + 2, 4]
