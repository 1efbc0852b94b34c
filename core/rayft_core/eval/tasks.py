"""Multiple-choice benchmarks from local files, in the layouts MMLU, C-Eval and CMMLU ship:

    mmlu/data/dev/anatomy_dev.csv     mmlu/data/test/anatomy_test.csv     no header: question,A,B,C,D,answer
    ceval/dev/logic_dev.csv           ceval/val/logic_val.csv             header: id,question,A,B,C,D,answer,explanation
    cmmlu/dev/anatomy.csv             cmmlu/test/anatomy.csv              header: ,Question,A,B,C,D,Answer

A subject is one file in the evaluated split (test or val); its dev file of the same name gives the k-shot
examples. An optional mapping.json at the top (LLaMA-Factory's: {"anatomy": {"name": "anatomy",
"category": "Other"}}) gives each subject the name its prompt uses and a category to average over.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from rayft_core.eval import EvalError, read_text

CHOICES = ("A", "B", "C", "D")
FIELDS = ("question", *CHOICES, "answer")
SHOT_SPLIT = "dev"
MAPPING_FILE = "mapping.json"


@dataclass(frozen=True)
class Question:
    question: str
    options: tuple[str, str, str, str]
    answer: str  # one of CHOICES
    line: int  # where the row starts in its file


@dataclass
class Subject:
    key: str  # the file's subject part: high_school_physics
    name: str  # as the prompt says it: "high school physics", or mapping.json's name
    category: str | None
    questions: list[Question]
    shots: list[Question] = field(default_factory=list)  # the dev split, in file order


def load_task(task_dir: str | Path, split: str = "test", subjects: list[str] | None = None) -> list[Subject]:
    """Every subject of ``split`` (or those named), with its questions, dev examples, name and category."""
    task_dir = Path(task_dir)
    files = subject_files(task_dir, split)
    if subjects:
        unknown = [s for s in subjects if s not in files]
        if unknown:
            raise EvalError(
                f"{task_dir}: no subject {', '.join(map(repr, unknown))} in the {split} split; it has "
                f"{', '.join(sorted(files))}"
            )
        files = {s: files[s] for s in subjects}
    shot_files = subject_files(task_dir, SHOT_SPLIT, required=False)
    mapping = read_mapping(task_dir)
    loaded = []
    for key, path in sorted(files.items()):
        entry = mapping.get(key, {})
        shots = read_questions(shot_files[key]) if key in shot_files else []
        loaded.append(
            Subject(
                key=key,
                name=entry.get("name", key.replace("_", " ")),
                category=entry.get("category"),
                questions=read_questions(path),
                shots=shots,
            )
        )
    return loaded


def subject_files(task_dir: Path, split: str, required: bool = True) -> dict[str, Path]:
    """{subject: csv path} of one split: MMLU's data/<split>/<subject>_<split>.csv, C-Eval's
    <split>/<subject>_<split>.csv or CMMLU's <split>/<subject>.csv."""
    folder = next((d for d in (task_dir / "data" / split, task_dir / split) if d.is_dir()), None)
    if folder is None:
        if not required:
            return {}
        raise EvalError(
            f"{task_dir}: no {split}/ folder (MMLU keeps its splits in data/dev, data/test; C-Eval and "
            "CMMLU in dev/, val/, test/)"
        )
    suffix = f"_{split}"
    files = {p.stem.removesuffix(suffix): p for p in folder.glob("*.csv")}
    if not files and required:
        raise EvalError(f"{folder}: no .csv files")
    return files


def read_mapping(task_dir: Path) -> dict[str, dict]:
    path = task_dir / MAPPING_FILE
    if not path.is_file():
        return {}
    try:
        mapping = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise EvalError(f"{path}: not valid JSON ({e})") from e
    bad = [k for k, v in mapping.items() if not isinstance(v, dict)] if isinstance(mapping, dict) else ["(top level)"]
    if bad:
        raise EvalError(f'{path}: expected {{"subject": {{"name": ..., "category": ...}}}}; {bad[0]} is not like that')
    return mapping


def read_questions(path: Path) -> list[Question]:
    """The rows of one benchmark CSV, checked: every column present, every answer one of A-D."""
    reader = csv.reader(io.StringIO(read_text(path, "utf-8-sig"), newline=""))  # -sig: Excel starts files with a BOM
    rows = []
    while True:
        line = reader.line_num + 1  # where the next record starts (a quoted cell may span lines)
        try:
            row = next(reader, None)
        except csv.Error as e:
            raise EvalError(f"{path} line {line}: not valid CSV ({e})") from None
        if row is None:
            break
        if any(cell.strip() for cell in row):
            rows.append((line, row))
    if not rows:
        raise EvalError(f"{path}: no questions")
    columns = _header(path, rows[0][1])
    if columns is None:  # MMLU: no header, exactly these six columns
        columns, exact = dict(zip(FIELDS, range(len(FIELDS)))), True
        layout = "question, A, B, C, D, answer: a CSV without a header has these six"
    else:
        rows, exact = rows[1:], False
        layout = "as many as the header"
    width = max(columns.values()) + 1
    questions = []
    for line, row in rows:
        if len(row) < width or (exact and len(row) != width):
            raise EvalError(f"{path} line {line}: {len(row)} cells, expected {width} ({layout})")
        cell = {name: row[i] for name, i in columns.items()}
        answer = cell["answer"].strip()
        if answer not in CHOICES:
            hint = " (C-Eval's test split ships without answers: evaluate --split val)" if not answer else ""
            raise EvalError(f"{path} line {line}: answer {answer!r} is not one of A, B, C, D{hint}")
        questions.append(Question(cell["question"], tuple(cell[c] for c in CHOICES), answer, line))  # type: ignore[arg-type]
    return questions


def _header(path: Path, row: list[str]) -> dict[str, int] | None:
    """{field: column} when the first row is a header (it names a question or answer column), else None."""
    names = [cell.strip().lower() for cell in row]
    if "question" not in names and "answer" not in names:
        return None
    missing = [f for f in FIELDS if f.lower() not in names]
    if missing:
        hint = " (C-Eval's test split ships without answers: evaluate --split val)" if missing == ["answer"] else ""
        raise EvalError(
            f"{path}: missing column {', '.join(missing)}{hint}; the header has {', '.join(c for c in row if c)}, "
            "a benchmark CSV needs question, A, B, C, D, answer"
        )
    return {f: names.index(f.lower()) for f in FIELDS}
