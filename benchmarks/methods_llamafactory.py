"""benchmarks/methods.py --llamafactory: the methods LLaMA-Factory 0.9.5 has, one YAML per method given to both
tools (`llamafactory-cli train` and `rayft train`, which translates it), one after the other, on the same tiny
Llama and rows. Trainable parameters as each tool logs them, and training tokens/s (non-padding tokens over the
training loop's time: LLaMA-Factory's num_input_tokens_seen / train_runtime, rayft's summary.json)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml
from _peer import LF_VENV, ensure_lf_venv, fresh_dir, lf_trainer_results, measure

ROOT = Path(__file__).resolve().parents[1]
RAYFT = ROOT / ".venv" / "bin" / "rayft"
STEPS = 40
LOG_STEPS = 10  # both tools log (rayft: reports through Ray Train) every 10 steps
# the optimizers LLaMA-Factory imports for these methods, which its own requirements leave out
LF_EXTRAS = ["galore-torch", "apollo-torch", "badam", "adam-mini"]


def _dataset(work: Path) -> Path:
    data = work / "lf-data"
    data.mkdir(parents=True, exist_ok=True)
    words = "the a of to and in is it you that he was for on are with as his they be at one have this".split()
    rows = [
        {"instruction": " ".join(words[(i + j) % len(words)] for j in range(30)), "input": "", "output": " ".join(
            words[(i * 3 + j) % len(words)] for j in range(120))}
        for i in range(STEPS * 4)
    ]  # fmt: skip
    (data / "bench.json").write_text(json.dumps(rows))
    (data / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": "bench.json"}}))
    return data


def _yaml(model: Path, data: Path, keys: dict, out: Path) -> dict:
    return {
        "model_name_or_path": str(model),
        "stage": "sft",
        "do_train": True,
        "dataset": "bench",
        "dataset_dir": str(data),
        "template": "default",
        "cutoff_len": 256,
        "output_dir": str(out),
        "overwrite_output_dir": True,
        "logging_steps": LOG_STEPS,
        "report_to": "none",
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-4,
        "max_steps": STEPS,
        "bf16": False,
        "disable_gradient_checkpointing": True,  # the same work on both sides: no recomputation
        "include_num_input_tokens_seen": "non_padding",
        "disable_shuffling": True,
        "seed": 42,
        **keys,
    }


def _trainable(log: Path, pattern: str) -> int | None:
    m = re.search(pattern, log.read_text())
    return int(m.group(1).replace(",", "")) if m else None


def _llamafactory(config: Path, out: Path) -> dict:
    res = measure(
        [str(LF_VENV / "bin" / "llamafactory-cli"), "train", config.name], config.parent, config.parent / "log.txt", {}
    )
    if res["rc"]:
        return {"error": Path(res["log"]).read_text()[-600:]}
    results, _, _, tokens = lf_trainer_results(out)
    return {
        "tokens_per_s": tokens / results["train_runtime"],
        "trainable": _trainable(Path(res["log"]), r"trainable params: ([\d,]+)"),
    }


def _rayft(config: Path, out: Path) -> dict:
    res = measure([str(RAYFT), "train", config.name], config.parent, config.parent / "log.txt", {})
    if res["rc"]:
        return {"error": Path(res["log"]).read_text()[-600:]}
    summary = json.loads((out / "summary.json").read_text())
    return {
        "tokens_per_s": summary["tokens_per_s"],
        "trainable": _trainable(Path(res["log"]), r"trainable parameters: ([\d,]+)"),
    }


def side_by_side(model: Path, names: list[str], lf_methods: dict[str, dict], work: Path) -> None:
    ensure_lf_venv(work)
    subprocess.run([str(LF_VENV / "bin" / "python"), "-m", "pip", "install", "-q", *LF_EXTRAS], check=True)
    data = _dataset(work)
    rows = []
    for name in names:
        runs = {}
        for tool, runner in (("llamafactory", _llamafactory), ("rayft", _rayft)):
            where = fresh_dir(work / "lf-runs" / re.sub(r"\W+", "_", name) / tool)
            out = where / "out"
            config = where / "x.yaml"
            config.write_text(yaml.safe_dump(_yaml(model, data, lf_methods[name], out)))
            runs[tool] = runner(config, out)
        rows.append((name, runs))
        print(f"  {name}: {runs}", flush=True)
    (ROOT / "benchmarks" / "results" / "methods_llamafactory.json").write_text(json.dumps(rows, indent=1))
    print(
        f"\nLLaMA-Factory 0.9.5 and rayft, the same YAML, {STEPS} steps of 4 rows (tiny Llama, fp32, no recompute, "
        f"logging every {LOG_STEPS}):\n"
    )
    print(
        "| method | trainable (LLaMA-Factory) | trainable (rayft) | tokens/s LLaMA-Factory | tokens/s rayft | rayft / LF |"
    )
    print("|---|---|---|---|---|---|")
    for name, runs in rows:
        lf, rf = runs["llamafactory"], runs["rayft"]
        cells = [
            f"{r['trainable']:,}" if r.get("trainable") else ("failed" if "error" in r else "-") for r in (lf, rf)
        ] + [f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "failed" for r in (lf, rf)]
        ratio = (
            f"{rf['tokens_per_s'] / lf['tokens_per_s']:.2f}x" if "tokens_per_s" in lf and "tokens_per_s" in rf else "-"
        )
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio} |")
