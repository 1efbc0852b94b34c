"""Every input format aligned to the one standard row; dataset_info.json entries resolved; bad rows named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayft.sources import line_chunks, read_line_chunk, rows_of_file
from rayft_core.config import DatasetSpec
from rayft_core.data.formats import RowError, align_row
from rayft_core.data.mixing import interleave_counts
from rayft_core.data.registry import DatasetError, check_stage_fit, load_dataset_info, resolve_spec
from rayft_core.stage_config import section
from tests.helpers import SHARED

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


def spec(**kw) -> DatasetSpec:
    return DatasetSpec.model_validate({"path": "x.json", **kw})


def test_alpaca_with_system_history_and_input():
    row = {
        "instruction": "Translate",
        "input": "bonjour",
        "output": "hello",
        "system": "Be brief.",
        "history": [["hi", "hey"]],
    }
    assert align_row(row, spec(), section("sft")) == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hey"},
            {"role": "user", "content": "Translate\nbonjour"},
            {"role": "assistant", "content": "hello"},
        ],
        "tools": None,
    }


def test_alpaca_custom_columns_preference_and_kto():
    orca = spec(columns={"prompt": "question", "response": "response", "system": "system_prompt"})
    row = {"question": "q?", "response": "a.", "system_prompt": "sys"}
    assert [m["role"] for m in align_row(row, orca, section("sft"))["messages"]] == ["system", "user", "assistant"]
    ranked = align_row({"instruction": "q", "chosen": "good", "rejected": "bad"}, spec(ranking=True), section("dpo"))
    assert ranked["chosen"] == {"role": "assistant", "content": "good"} and ranked["messages"][-1]["role"] == "user"
    old_style = align_row({"instruction": "q", "output": ["good", "bad"]}, spec(ranking=True), section("dpo"))
    assert old_style["rejected"]["content"] == "bad"
    kto = align_row(
        {"instruction": "q", "output": "a", "label": False}, spec(columns={"kto_tag": "label"}), section("kto")
    )
    assert kto["kto_tag"] is False


def test_pretraining_reads_the_prompt_column_or_text():
    c4 = spec(columns={"prompt": "text"})
    assert align_row({"text": "a document"}, c4, section("pt")) == {"text": "a document"}
    assert align_row({"text": "doc"}, spec(format="text"), section("pt")) == {"text": "doc"}


def test_sharegpt_tool_calls_observations_and_tools():
    tools = json.dumps([{"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}])
    row = {
        "conversations": [
            {"from": "human", "value": "call f"},
            {"from": "function_call", "value": json.dumps({"name": "f", "arguments": {"x": 1}})},
            {"from": "observation", "value": '{"ok": true}'},
            {"from": "gpt", "value": "done"},
        ],
        "tools": tools,
    }
    out = align_row(row, spec(format="sharegpt"), section("sft"))
    assert out["messages"][1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}],
    }
    assert out["messages"][2] == {"role": "tool", "content": '{"ok": true}'}
    assert out["tools"][0]["type"] == "function" and out["tools"][0]["function"]["name"] == "f"


def test_sharegpt_custom_tags_openai_and_preference():
    tagged = spec(
        format="sharegpt",
        columns={"messages": "messages"},
        tags={"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    )
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert align_row(row, tagged, section("sft"))["messages"][-1] == {"role": "assistant", "content": "a"}
    openai = spec(format="openai", columns={"messages": "messages"})
    row = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
        ]
    }
    assert [m["role"] for m in align_row(row, openai, section("sft"))["messages"]] == ["system", "user", "assistant"]
    dpo = spec(format="sharegpt", ranking=True)
    row = {
        "conversations": [{"from": "human", "value": "q"}],
        "chosen": {"from": "gpt", "value": "good"},
        "rejected": {"from": "gpt", "value": "bad"},
    }
    out = align_row(row, dpo, section("dpo"))
    assert out["chosen"]["content"] == "good" and out["rejected"]["content"] == "bad"


@pytest.mark.parametrize(
    "row, fmt, reason",
    [
        ({"output": "a"}, "alpaca", "missing column"),
        ({"instruction": 3, "output": "a"}, "alpaca", "wrong type"),
        ({"instruction": "q", "output": " "}, "alpaca", "empty turn"),
        ({"conversations": [{"from": "gpt", "value": "a"}]}, "sharegpt", "roles out of order"),
        ({"conversations": [{"from": "human", "value": "q"}]}, "sharegpt", "roles out of order"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}]}, "sharegpt", "empty turn"),
        ({"conversations": "hi"}, "sharegpt", "wrong type"),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{oops"}]},
            "sharegpt",
            "invalid JSON",
        ),
    ],
)
def test_bad_rows_name_file_row_and_reason(row, fmt, reason):
    with pytest.raises(RowError, match=rf"^data\.jsonl: row 7: {reason}: ") as e:
        align_row({**row, "path": "data.jsonl", "__row__": 7}, spec(format=fmt), section("sft"))
    assert e.value.reason == reason


def test_kto_tag_must_be_boolean():
    with pytest.raises(RowError, match="KTO column 'label' must be true or false, got 'yes'"):
        align_row(
            {"instruction": "q", "output": "a", "label": "yes"}, spec(columns={"kto_tag": "label"}), section("kto")
        )


def test_reader_keeps_strings_and_reports_bad_lines(tmp_path):
    rows = rows_of_file({"path": "d.jsonl", "bytes": b'{"instruction": "42", "output": "x"}\nnot json\n\n\xff\n'})
    assert json.loads(rows[0]["json"])["instruction"] == "42"  # never type-inferred into an int
    assert rows[1]["json"] == "not json" and rows[1]["row"] == 2  # parsed (and reported) in the tokenizing tasks
    assert rows[2]["error"] == "d.jsonl: row 4: undecodable bytes: not UTF-8 at byte 0"
    csv_rows = rows_of_file({"path": "d.csv", "bytes": b"instruction,output\nq,007\n"})
    assert json.loads(csv_rows[0]["json"]) == {"instruction": "q", "output": "007"} and csv_rows[0]["row"] == 2
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"instruction": ["q"], "output": ["a"]}), tmp_path / "d.parquet")
    parquet = rows_of_file({"path": "d.parquet", "bytes": (tmp_path / "d.parquet").read_bytes()})
    assert json.loads(parquet[0]["json"]) == {"instruction": "q", "output": "a"}


@pytest.mark.parametrize("tail", [b"\n", b""])
def test_line_chunks_cover_a_file_exactly_with_its_line_numbers(tmp_path, tail):
    """Chunked reading (one task per chunk of lines) gives the rows, bad rows and line numbers of reading the file
    whole, whatever the chunk size and the scan block (SCAN_BYTES) against line boundaries."""
    lines = [json.dumps({"instruction": f"q{i}" * (i % 7), "output": "a"}).encode() for i in range(1000)]
    lines[3], lines[500], lines[777] = b"not json", b"", b"\xff"
    data = b"\xef\xbb\xbf" + b"\n".join(lines) + tail  # a BOM before row 1
    path = tmp_path / "d.jsonl"
    path.write_bytes(data)
    whole = rows_of_file({"path": str(path), "bytes": data})
    for rows_per_chunk, scan in [(100, 8 * 2**20), (7, 4096), (1000, 100), (5000, 8 * 2**20)]:
        import rayft.sources

        rayft.sources.SCAN_BYTES, saved = scan, rayft.sources.SCAN_BYTES
        try:
            chunks = line_chunks(str(path), rows_per_chunk)
        finally:
            rayft.sources.SCAN_BYTES = saved
        assert [c["first_line"] for c in chunks] == list(range(1, 1001, rows_per_chunk))
        assert sum(c["length"] for c in chunks) == len(data)
        assert [r for c in chunks for r in read_line_chunk(c)] == whole
    assert [r["row"] for r in whole if r["error"]] == [778]  # undecodable; "not json" is found where rows are parsed
    assert [r["row"] for r in whole if r["json"] == "not json"] == [4] and len(whole) == 999  # line 501 is blank


def test_dataset_info_names_resolve_with_closest_name():
    resolved = resolve_spec(DatasetSpec(dataset="weather_tools"), str(EXAMPLES), "data.train[0]")
    assert resolved.path == str(EXAMPLES / "tools_sharegpt.json") and resolved.format == "sharegpt"
    assert resolved.columns.tools == "tools"
    assert resolve_spec(DatasetSpec(dataset="corpus"), str(EXAMPLES), "k").format == "text"
    with pytest.raises(
        DatasetError, match=r"data.train\[0\].dataset: 'weather_tool' is not in .*did you mean 'weather_tools'"
    ):
        resolve_spec(DatasetSpec(dataset="weather_tool"), str(EXAMPLES), "data.train[0]")
    with pytest.raises(DatasetError, match="dataset_info.json, which does not exist"):
        resolve_spec(DatasetSpec(dataset="x"), "/nonexistent", "data.train[0]")


def test_stage_fit_is_checked_before_reading():
    with pytest.raises(DatasetError, match="stage sft needs conversations"):
        check_stage_fit(spec(format="text"), section("sft"), "k")
    with pytest.raises(DatasetError, match="is a ranking .* stage sft cannot use it"):
        check_stage_fit(spec(ranking=True), section("sft"), "k")
    with pytest.raises(DatasetError, match="stage dpo trains on preference pairs"):
        check_stage_fit(spec(), section("dpo"), "k")
    with pytest.raises(DatasetError, match="stage kto needs a boolean tag"):
        check_stage_fit(spec(), section("kto"), "k")


def _align_file(info: dict, name: str, dataset_dir: Path) -> tuple[int, list[str]]:
    resolved = resolve_spec(DatasetSpec(dataset=name), str(dataset_dir), name)
    stage = (
        "dpo"
        if resolved.ranking
        else "kto"
        if resolved.columns.kto_tag
        else "pt"
        if resolved.format == "text"
        or "prompt" in info[name].get("columns", {})
        and "response" not in info[name].get("columns", {})
        else "sft"
    )
    stage = section(stage)
    check_stage_fit(resolved, stage, name)
    path = Path(resolved.path)
    good, errors = 0, []
    for raw in rows_of_file({"path": str(path), "bytes": path.read_bytes()}):
        try:
            if raw["error"]:
                raise RowError(raw["path"], "read", raw["error"])
            align_row({**json.loads(raw["json"]), "path": raw["path"], "__row__": raw["row"]}, resolved, stage)
            good += 1
        except RowError as e:
            errors.append(str(e))
    return good, errors


def test_shipped_dataset_info_aligns_every_row():
    info = load_dataset_info(str(EXAMPLES), "k")
    for name in info:
        good, errors = _align_file(info, name, EXAMPLES)
        assert good > 0 and errors == [], (name, errors[:3])


@pytest.mark.skipif(
    not (SHARED / "data" / "dataset_info.json").is_file(), reason="needs ../shared/data (LLaMA-Factory's demo data)"
)
def test_llamafactory_dataset_info_reads_unchanged():
    """LLaMA-Factory's own dataset_info.json: every entry whose file is here aligns with no bad row;
    multimodal entries are refused by name; hub entries resolve to hub specs."""
    data = SHARED / "data"
    info = load_dataset_info(str(data), "k")
    checked = []
    for name, entry in info.items():
        if "images" in entry.get("columns", {}) or {"videos", "audios"} & set(entry.get("columns", {})):
            with pytest.raises(DatasetError, match="multimodal"):
                resolve_spec(DatasetSpec(dataset=name), str(data), name)
            continue
        if "file_name" not in entry and "hf_hub_url" not in entry:  # ModelScope only
            with pytest.raises(DatasetError, match="only ModelScope"):
                resolve_spec(DatasetSpec(dataset=name), str(data), name)
            continue
        if "file_name" not in entry:
            assert resolve_spec(DatasetSpec(dataset=name), str(data), name).hf_hub_url
            continue
        if not (data / entry["file_name"]).is_file():
            continue
        good, errors = _align_file(info, name, data)
        assert good > 0 and errors == [], (name, errors[:3])
        checked.append(name)
    assert {
        "alpaca_en_demo",
        "identity",
        "glaive_toolcall_en_demo",
        "dpo_en_demo",
        "kto_en_demo",
        "c4_demo",
        "wiki_demo",
    } <= set(checked)


def test_interleave_counts_are_seeded_and_stop_as_asked():
    a = interleave_counts([100, 10], [0.5, 0.5], "first_exhausted", seed=1)
    assert a == interleave_counts([100, 10], [0.5, 0.5], "first_exhausted", seed=1)
    assert a[1] == 10 and 0 < a[0] < 40  # stops when the small one runs out
    b = interleave_counts([100, 10], [0.5, 0.5], "all_exhausted", seed=1)
    assert b[0] == 100 and b[1] > 10  # on until both ran through: the small one repeats
    c = interleave_counts([1000, 1000], [0.9, 0.1], "first_exhausted", seed=3)
    assert c[0] == 1000 and 60 < c[1] < 160
