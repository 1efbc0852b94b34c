"""/work/main/.venv/bin/python benchmarks/real_model_vs_llamafactory.py --model DIR [--methods lora full] [--max-samples 128]

SFT of a real instruct model, rayft vs LLaMA-Factory 0.9.5, on this CPU machine, one after the other (never
concurrently), with the same LLaMA-Factory YAML given to both tools: `llamafactory-cli train x.yaml` and
`rayft train x.yaml` (rayft translates it: one worker, its defaults for everything the YAML leaves open). rayft
runs twice: with the YAML as it is, and with `disable_gradient_checkpointing: false` written out, which makes it
checkpoint activations as LLaMA-Factory always does (the same work per step).

The model: SmolLM2-135M-Instruct as `../shared/fixtures/real-model.sh DIR` builds it (134.5M parameters, vocab
49,152, fp32). The YAML: alpaca_en_demo (the first --max-samples rows), template chatml (the model's own format,
without its default system prompt, on both sides), cutoff 256, batch 4, 1 epoch, lr 1e-4 cosine, seed 42, logging
every step, `disable_shuffling: true` (both tools then train the rows in the file's order: the same batches at
every step); LoRA rank 16 on all linear layers, or full fine-tuning. Beyond the YAML each tool keeps its own
defaults: LLaMA-Factory checkpoints activations; rayft checkpoints only where a worker's memory needs it
(model.gradient_checkpointing: auto, off here), its one worker gets the machine's cores (cluster.cpus_per_worker:
auto) and no ZeRO (one worker has nothing to shard across).

Each command is measured as a whole process (benchmarks/_peer.measure: wall time, peak RSS/PSS of its process tree,
CPU seconds). Training tokens/s = non-padding input tokens trained / training-loop time: LLaMA-Factory's
num_input_tokens_seen (include_num_input_tokens_seen: non_padding) over train_runtime, rayft's summary.json tokens
over train_seconds. The loss curves are compared step by step (the same rows in each step; a LoRA adapter starts
from its own random A matrices in each tool, full fine-tuning from the same weights).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import yaml
from _peer import LF_VENV, add_idle_arguments, ensure_lf_venv, fresh_dir, lf_trainer_results, measure, wait_idle

ROOT = Path(__file__).resolve().parents[1]
RAYFT = ROOT / ".venv" / "bin" / "rayft"
DATA_DIR = Path("/work/shared/data")
WORK = Path("/tmp/real-bench")
RESULTS = ROOT / "benchmarks" / "results"
LOG_STEPS = 1
SHOWN_STEPS = (1, 2, 4, 8, 16, 24, 32)


def lf_yaml(model: Path, method: str, max_samples: int, out: Path) -> dict:
    cfg = {
        "model_name_or_path": str(model),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": method,
        "dataset": "alpaca_en_demo",
        "dataset_dir": str(DATA_DIR),
        "template": "chatml",
        "cutoff_len": 256,
        "max_samples": max_samples,
        "overwrite_cache": True,
        "output_dir": str(out),
        "overwrite_output_dir": True,
        "logging_steps": LOG_STEPS,
        "plot_loss": False,
        "report_to": "none",
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-4,
        "num_train_epochs": 1.0,
        "lr_scheduler_type": "cosine",
        "bf16": False,
        "include_num_input_tokens_seen": "non_padding",
        "seed": 42,
        "disable_shuffling": True,
    }
    if method == "lora":
        cfg.update({"lora_rank": 16, "lora_target": "all"})
    return cfg


def run_llamafactory(config: Path, out: Path) -> dict:
    env = {"HF_DATASETS_CACHE": str(config.parent / "hf-datasets-cache")}  # fresh: no cached arrow files
    res = measure(
        [str(LF_VENV / "bin" / "llamafactory-cli"), "train", config.name], config.parent, config.parent / "log.txt", env
    )
    if res["rc"] != 0:
        return res
    results, state, logs, tokens = lf_trainer_results(out)
    return {
        **res,
        "train_s": results["train_runtime"],
        "train_tokens": tokens,
        "tokens_per_s": tokens / results["train_runtime"],
        "steps": state["global_step"],
        "losses": {h["step"]: h["loss"] for h in logs},
        "gradient_checkpointing": "Gradient checkpointing enabled" in Path(res["log"]).read_text(),
    }


def run_rayft(config: Path, out: Path) -> dict:
    res = measure([str(RAYFT), "train", config.name], config.parent, config.parent / "log.txt", {})
    if res["rc"] != 0:
        return res
    summary = json.loads((out / "summary.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        **res,
        "train_s": summary["train_seconds"],
        "train_tokens": summary["tokens"],
        "tokens_per_s": summary["tokens_per_s"],
        "steps": summary["steps"],
        "threads": summary["threads_per_worker"],
        "gradient_checkpointing": summary["gradient_checkpointing"],
        "losses": {r["step"]: r["train/loss"] for r in metrics if "train/loss" in r and r["step"] % LOG_STEPS == 0},
    }


def print_table(method: str, results: dict[str, dict]) -> None:
    lf = results["llamafactory"]
    names = {"llamafactory": "LLaMA-Factory", "rayft": "rayft", "rayft-gc": "rayft, gc on"}
    print(
        f"\n{method}: {'':22}"
        + "".join(f"{names[t]:>15}{'/LF':>7}" if t != "llamafactory" else f"{names[t]:>15}" for t in results)
    )
    for key, label, fmt in (
        ("wall_s", "wall time (s)", "{:.1f}"),
        ("train_s", "training loop (s)", "{:.1f}"),
        ("tokens_per_s", "train tokens/s", "{:.0f}"),
        ("train_tokens", "tokens trained", "{:,}"),
        ("steps", "optimizer steps", "{}"),
        ("gradient_checkpointing", "gradient checkpointing", "{}"),
        ("peak_pss_gb", "peak PSS, tree (GB)", "{:.2f}"),
        ("cpu_s", "CPU time of tree (s)", "{:.0f}"),
        ("other_cpu_s", "CPU-s of others", "{:.0f}"),
    ):
        row = f"  {label:28}"
        for tool, r in results.items():
            v = r.get(key)
            row += f"{fmt.format(v) if v is not None else '-':>15}"
            if tool != "llamafactory":
                a = lf.get(key)
                ratio = a and v and key in ("wall_s", "train_s", "tokens_per_s", "peak_pss_gb", "cpu_s")
                row += f"{f'{v / a:.2f}x' if ratio else '':>7}"
        print(row)
    steps = [s for s in SHOWN_STEPS if all(str(s) in r.get("losses", {}) for r in results.values())]
    if steps:
        print("  loss at step " + "".join(f"{s:>8}" for s in steps))
        for tool, r in results.items():
            print(f"  {names[tool]:13}" + "".join(f"{r['losses'][str(s)]:8.3f}" for s in steps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[2])
    ap.add_argument("--model", type=Path, required=True, help="SmolLM2-135M-Instruct, as real-model.sh builds it")
    ap.add_argument("--methods", nargs="+", choices=["lora", "full"], default=["lora", "full"])
    ap.add_argument("--max-samples", type=int, default=128, help="alpaca_en_demo rows (999 in all)")
    add_idle_arguments(ap)
    args = ap.parse_args()
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"--model {args.model}: no config.json; build it with ../shared/fixtures/real-model.sh")
    ensure_lf_venv(WORK)
    report = {"model": str(args.model), "max_samples": args.max_samples, "cpus": os.cpu_count(), "results": {}}
    for method in args.methods:
        results = {}
        for tool, run, extra in (
            ("llamafactory", run_llamafactory, {}),
            ("rayft", run_rayft, {}),
            ("rayft-gc", run_rayft, {"disable_gradient_checkpointing": False}),  # said: checkpoint, as LF does
        ):
            work = WORK / method / tool
            fresh_dir(work)
            out = work / "out"
            config = work / "train.yaml"
            config.write_text(
                yaml.safe_dump({**lf_yaml(args.model.absolute(), method, args.max_samples, out), **extra})
            )
            wait_idle(args.wait_idle, load=args.idle_load)
            print(f"{method}: running {tool} (load {os.getloadavg()[0]:.1f}) ...", flush=True)
            results[tool] = run(config, out)
            print(json.dumps({k: v for k, v in results[tool].items() if k != "losses"}), flush=True)
        if all(r["rc"] == 0 for r in results.values()):
            print_table(method, json.loads(json.dumps(results)))  # step keys as strings, as in the saved report
        report["results"][method] = results
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"real_model_vs_llamafactory-n{args.max_samples}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
