"""The deletion rule (rayft_core.ownership): rayft deletes only what it can prove it wrote."""

from __future__ import annotations

import pytest

from rayft_core import ownership
from rayft_core.ownership import EXPORT, PREPARED, RUN, SWEEP, OutputError

FLAG = "--overwrite"


def _run_dir(path, *extra):
    """A finished rayft run's directory (as train leaves it), plus ``extra`` entries."""
    (path / "checkpoint_000001").mkdir(parents=True)
    (path / "checkpoint_000001" / "state.pt").write_text("x")
    (path / "merged").mkdir()
    for name in ("rayft_export.json", "model.safetensors", "config.json"):
        (path / "merged" / name).write_text("x")
    for name in (
        "rayft_run.yaml",
        "metrics.jsonl",
        "summary.json",
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "README.md",
        "loss.png",
        *extra,
    ):
        (path / name).write_text("x")
    return path


def test_absent_and_empty_destinations_are_used(tmp_path):
    (tmp_path / "empty").mkdir()
    for dest in (tmp_path / "new" / "deeper", tmp_path / "empty"):
        assert ownership.problem(str(dest), RUN, False, FLAG) is None
        ownership.claim(str(dest), RUN, False, FLAG)
        assert dest.is_dir()


def test_an_earlier_run_is_replaced_only_with_overwrite(tmp_path):
    run = _run_dir(tmp_path / "run")
    why = ownership.problem(str(run), RUN, False, FLAG)
    assert why and "already holds a run written by rayft" in why and FLAG in why
    with pytest.raises(OutputError):
        ownership.claim(str(run), RUN, False, FLAG)
    assert (run / "metrics.jsonl").exists()
    ownership.claim(str(run), RUN, True, FLAG)
    assert run.is_dir() and list(run.iterdir()) == []  # rayft's entries gone, the directory itself kept


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_user_file_inside_a_run_blocks_overwrite_and_survives(tmp_path, overwrite):
    run = _run_dir(tmp_path / "run", "my_notes.txt")
    with pytest.raises(OutputError, match=r"holds files rayft did not write there \(my_notes.txt\)"):
        ownership.claim(str(run), RUN, overwrite, FLAG)
    assert (run / "my_notes.txt").read_text() == "x" and (run / "rayft_run.yaml").exists()


def test_a_user_file_inside_a_child_output_is_found(tmp_path):
    run = _run_dir(tmp_path / "run")
    (run / "merged" / "mine.py").write_text("x")
    with pytest.raises(OutputError, match=r"merged/mine.py"):
        ownership.claim(str(run), RUN, True, FLAG)
    assert (run / "merged" / "mine.py").exists()


@pytest.mark.parametrize("kind", [RUN, SWEEP, PREPARED, EXPORT])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_directory_without_the_marker_is_never_touched(tmp_path, kind, overwrite):
    # a base model's folder, a home directory, the working directory: files that look like rayft's are not enough
    base = tmp_path / "base"
    base.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "data.parquet"):
        (base / name).write_text("x")
    with pytest.raises(OutputError, match="not empty and holds files rayft did not write"):
        ownership.claim(str(base), kind, overwrite, FLAG)
    assert sorted(p.name for p in base.iterdir()) == [
        "config.json",
        "data.parquet",
        "model.safetensors",
        "tokenizer.json",
    ]


def test_a_file_is_not_a_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a directory"):
        ownership.claim(str(tmp_path / "f"), EXPORT, True, FLAG)
    assert (tmp_path / "f").read_text() == "x"


def test_clear_keeps_what_is_asked_and_everything_foreign(tmp_path):
    run = _run_dir(tmp_path / "run", "my_notes.txt")
    ownership.clear(str(run), RUN, keep=("metrics.jsonl", "rayft_run.yaml"))
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl", "my_notes.txt", "rayft_run.yaml"]
    ownership.clear(str(tmp_path / "absent"), RUN)  # a trial that never wrote its directory
    unmarked = tmp_path / "unmarked"
    unmarked.mkdir()
    (unmarked / "metrics.jsonl").write_text("x")
    ownership.clear(str(unmarked), RUN)  # without the marker nothing is rayft's
    assert (unmarked / "metrics.jsonl").exists()


def test_staged_dir_appears_whole_or_not_at_all(tmp_path):
    dest = tmp_path / "export"
    with pytest.raises(RuntimeError):
        with ownership.staged_dir(dest) as staged:
            (staged / "model.safetensors").write_text("half")
            raise RuntimeError("killed mid-write")
    assert not dest.exists() and list(tmp_path.iterdir()) == []  # no temporary left either
    with ownership.staged_dir(dest) as staged:
        (staged / "model.safetensors").write_text("whole")
    assert (dest / "model.safetensors").read_text() == "whole" and list(tmp_path.iterdir()) == [dest]
    empty = tmp_path / "empty"
    empty.mkdir()
    with ownership.staged_dir(empty) as staged:  # an existing empty directory (the working directory, say)
        (staged / "a").write_text("x")
    assert [p.name for p in empty.iterdir()] == ["a"]


def test_single_files(tmp_path):
    source, out = tmp_path / "lf.yaml", tmp_path / "out.yaml"
    source.write_text("x")
    with pytest.raises(OutputError, match="is this command's input"):
        ownership.check_new_file(source, True, inputs=(source,))
    ownership.check_new_file(out, False)
    ownership.write_file_atomically(out, "one")
    with pytest.raises(OutputError, match="already exists; .* --overwrite"):
        ownership.check_new_file(out, False)
    ownership.check_new_file(out, True)
    with pytest.raises(OutputError, match="is a directory"):
        ownership.check_new_file(tmp_path, True)
    with pytest.raises(RuntimeError):
        with ownership.staged_file(out) as staged:
            staged.write_text("half")
            raise RuntimeError
    assert out.read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["lf.yaml", "out.yaml"]


def test_run_names_stay_inside_storage_path():
    from pydantic import ValidationError

    from rayft_core.config import OutputConfig

    for bad in (".", "..", "../x", "/abs", "", "a/b"):
        with pytest.raises(ValidationError):
            OutputConfig(name=bad)
    assert OutputConfig(name="v1.2_run-3").name == "v1.2_run-3"
