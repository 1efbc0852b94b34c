"""/work/main/.venv/bin/python benchmarks/sft_lora_vs_llamafactory.py [--max-samples 64] [--rayft-workers 1 2]

LoRA SFT, rayft vs LLaMA-Factory 0.9.5, on this CPU machine, one after the other (never concurrently).

Both: a 19.5M-parameter Llama (hidden 64, 2 layers, untied head, random init) saved with the Qwen2.5
tokenizer files (vocab 151,665); alpaca_en_demo (999 rows); LoRA r=8 alpha=16 dropout 0 on all linear
layers but the head; cutoff 512; batch 8 per worker; 1 epoch; lr 1e-4 cosine; fp32. rayft renders with the
tokenizer's Qwen2.5 chat template, LLaMA-Factory with `template: qwen` (same text and default system).
LLaMA-Factory keeps its default gradient checkpointing (rayft's is off); both train every row (rayft pads the
last step of an epoch with masked rows).

Each command is measured as a whole process, start to exit: wall time; peak RSS and PSS of its process
tree (psutil sums RSS every 0.5 s and PSS every 2 s over the process, its descendants and every process of
its session, which the command starts anew, so Ray's GCS/raylet/workers count even if reparented; RSS
double-counts shared pages such as Ray's /dev/shm object store, PSS does not); CPU seconds of the tree;
CPU seconds of all other processes meanwhile (the machine is shared: contention shows there).
Training tokens/s = non-padding input tokens trained / training-loop time: rayft from metrics.jsonl (each
window's tokens/s and samples/s give its duration and tokens), LLaMA-Factory num_input_tokens_seen
(include_num_input_tokens_seen: non_padding) / train_runtime.

LLaMA-Factory's own venv, /tmp/lf-venv, is made when absent: torch==2.13.0 (CPU wheel), llamafactory==0.9.5
--no-deps, then its requirements but torch/torchaudio/torchvision, constrained to torch==2.13.0 (else pip
takes torchaudio 2.11 and with it a CUDA torch 2.15). No CPU torchaudio exists for torch 2.13 and LLaMA-
Factory imports it at start-up (for audio models only), so an empty stub `torchaudio` package goes into
that venv's site-packages. LLaMA-Factory must not run with cwd /tmp: Ray's /tmp/ray directory would pass
for the `ray` package there and LLaMA-Factory would then import ray.util and fail.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import yaml
from _peer import LF_VENV, build_model, ensure_lf_venv, fresh_dir, lf_trainer_results, measure, wait_idle

ROOT = Path(__file__).resolve().parents[1]
RAYFT = ROOT / ".venv" / "bin" / "rayft"
DATA_DIR = Path("/work/shared/data")
WORK = Path("/tmp/sft-bench")
RESULTS = ROOT / "benchmarks" / "results"
RANK, ALPHA, MAX_LEN, BATCH, LR, LOG_STEPS = 8, 16, 512, 8, 1e-4, 10


def run_llamafactory(model: Path, max_samples: int | None) -> dict:
    work = WORK / "lf"
    fresh_dir(work)
    cfg = {
        "model_name_or_path": str(model),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": RANK,
        "lora_alpha": ALPHA,
        "lora_dropout": 0.0,
        "lora_target": "all",
        "dataset": "alpaca_en_demo",
        "dataset_dir": str(DATA_DIR),
        "template": "qwen",
        "cutoff_len": MAX_LEN,
        "overwrite_cache": True,
        "preprocessing_num_workers": 2,
        "output_dir": str(work / "out"),
        "logging_steps": LOG_STEPS,
        "plot_loss": False,
        "overwrite_output_dir": True,
        "report_to": "none",
        "per_device_train_batch_size": BATCH,
        "gradient_accumulation_steps": 1,
        "learning_rate": LR,
        "num_train_epochs": 1.0,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.0,
        "bf16": False,
        "fp16": False,
        "include_num_input_tokens_seen": "non_padding",
        "seed": 42,
    }
    if max_samples:
        cfg["max_samples"] = max_samples
    (work / "train.yaml").write_text(yaml.safe_dump(cfg))
    env = {"HF_DATASETS_CACHE": str(work / "hf-datasets-cache")}  # fresh: no cached json/arrow from earlier runs
    res = measure([str(LF_VENV / "bin" / "llamafactory-cli"), "train", "train.yaml"], work, work / "log.txt", env)
    if res["rc"] != 0:
        return res
    results, state, logs, tokens = lf_trainer_results(work / "out")
    return {
        **res,
        "train_s": results["train_runtime"],
        "train_tokens": tokens,
        "tokens_per_s": tokens / results["train_runtime"],
        "dataset_tokens": tokens,  # every row trained once
        "rows_trained": round(results["train_samples_per_second"] * results["train_runtime"]),
        "steps": state["global_step"],
        "final_loss": logs[-1]["loss"] if logs else None,
    }


def run_rayft(model: Path, max_samples: int | None, workers: int) -> dict:
    work = WORK / f"rayft-w{workers}"
    fresh_dir(work)
    dataset = {"path": str(DATA_DIR / "alpaca_en_demo.json"), "format": "alpaca"}
    if max_samples:
        dataset["num_samples"] = max_samples
    cfg = {
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "tuning": {"method": "lora", "rank": RANK, "alpha": ALPHA, "dropout": 0.0, "target": "all"},
        "stage": {"name": "sft"},
        "data": {"train": [dataset], "max_seq_len": MAX_LEN},
        "train": {
            "num_epochs": 1,
            "micro_batch_size": BATCH,
            "gradient_accumulation_steps": 1,
            "learning_rate": LR,
            "lr_scheduler": "cosine",
            "warmup_ratio": 0.0,
            "logging_steps": LOG_STEPS,
            "seed": 42,
        },
        "deepspeed": {"zero_stage": 0},
        "cluster": {"num_workers": workers},
        "output": {"storage_path": str(work / "out"), "name": "run", "overwrite": True},
    }
    (work / "run.yaml").write_text(yaml.safe_dump(cfg))
    res = measure([str(RAYFT), "train", "run.yaml"], work, work / "log.txt", {})
    if res["rc"] != 0:
        return res
    rows = sorted(
        (json.loads(line) for line in (work / "out" / "run" / "metrics.jsonl").read_text().splitlines()),
        key=lambda r: r["step"],
    )
    train_s = tokens = samples = 0.0
    prev = 0
    for r in rows:  # window duration = its samples / its samples/s
        n = (r["step"] - prev) * BATCH * workers
        dt = n / r["perf/samples_per_s"]
        train_s, tokens, samples, prev = train_s + dt, tokens + r["perf/tokens_per_s"] * dt, samples + n, r["step"]
    m = re.search(r"training data: ([\d,]+) examples, ([\d,]+) tokens", Path(res["log"]).read_text())
    return {
        **res,
        "train_s": train_s,
        "train_tokens": round(tokens),
        "tokens_per_s": tokens / train_s,
        "dataset_tokens": int(m.group(2).replace(",", "")) if m else None,
        "rows_trained": int(samples),
        "steps": prev,
        "final_loss": rows[-1]["train/loss"],
    }


def print_table(results: dict[str, dict]) -> None:
    lf = results.get("llamafactory") if results.get("llamafactory", {}).get("rc") == 0 else None
    fields = [
        ("wall_s", "wall time (s)", "{:.1f}"),
        ("train_s", "training loop (s)", "{:.1f}"),
        ("tokens_per_s", "train tokens/s", "{:.0f}"),
        ("train_tokens", "tokens trained", "{:,}"),
        ("dataset_tokens", "dataset tokens (all rows)", "{:,}"),
        ("rows_trained", "rows trained", "{:,}"),
        ("steps", "optimizer steps", "{}"),
        ("peak_rss_gb", "peak RSS, tree sum (GB)", "{:.2f}"),
        ("peak_pss_gb", "peak PSS, tree sum (GB)", "{:.2f}"),
        ("cpu_s", "CPU time of tree (s)", "{:.0f}"),
        ("other_cpu_s", "CPU-s of other processes", "{:.0f}"),
        ("load1_at_start", "load avg at start", "{:.1f}"),
        ("final_loss", "last logged loss", "{:.4f}"),
    ]
    names = [n for n in results if results[n]["rc"] == 0]
    others = [n for n in names if n != "llamafactory"]
    print(f"{'':27}" + "".join(f"{n:>14}" for n in names) + "".join(f"{n + '/LF':>16}" for n in others))
    for key, label, fmt in fields:
        cells = [f"{fmt.format(results[n][key]) if results[n].get(key) is not None else '-':>14}" for n in names]
        for n in others:
            a, b = results[n].get(key), lf.get(key) if lf else None
            ok = key in ("wall_s", "train_s", "tokens_per_s", "peak_rss_gb", "peak_pss_gb", "cpu_s") and a and b
            cells.append(f"{(f'{a / b:.2f}x' if ok else ''):>16}")
        print(f"{label:27}" + "".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[2])
    ap.add_argument("--max-samples", type=int, default=None, help="use only the first N rows (smoke runs)")
    ap.add_argument("--rayft-workers", type=int, nargs="+", default=[1, 2], help="rayft runs, one per worker count")
    ap.add_argument("--skip-llamafactory", action="store_true", help="only the rayft runs (no ratios)")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=300,
        help="before each run, wait up to this many seconds "
        "for the 1-min load average to fall below 1.5 (the machine is shared)",
    )
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    model = WORK / "model"
    fresh_dir(model)
    params = build_model(model)
    print(f"model: {params:,} parameters at {model}", flush=True)
    results: dict[str, dict] = {}
    if not args.skip_llamafactory:
        ensure_lf_venv(WORK)
        wait_idle(args.wait_idle, load=1.5)
        print(f"running LLaMA-Factory (load {os.getloadavg()[0]:.1f}) ...", flush=True)
        results["llamafactory"] = run_llamafactory(model, args.max_samples)
        print(json.dumps(results["llamafactory"]), flush=True)
    for w in args.rayft_workers:
        wait_idle(args.wait_idle, load=1.5)
        print(f"running rayft, {w} worker(s) (load {os.getloadavg()[0]:.1f}) ...", flush=True)
        results[f"rayft-w{w}"] = run_rayft(model, args.max_samples, w)
        print(json.dumps(results[f"rayft-w{w}"]), flush=True)
    print_table(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"sft_lora_vs_llamafactory{f'-n{args.max_samples}' if args.max_samples else ''}.json"
    out.write_text(
        json.dumps(
            {
                "model_params": params,
                "max_samples": args.max_samples,
                "machine_cpus": os.cpu_count(),
                "results": results,
            },
            indent=2,
        )
    )
    print(f"results: {out}")


if __name__ == "__main__":
    main()
