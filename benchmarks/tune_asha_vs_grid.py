"""`rayft tune`: ASHA against running the full grid, on the same space, cluster and data, in one run.

    .venv/bin/python benchmarks/tune_asha_vs_grid.py [--wait-idle 600] [--markdown FILE]

The demo's task (a tiny Llama and tokenizer built here, the successor questions of `rayft demo` as
LoRA SFT data; nothing from ../shared is needed). The space is a grid of learning rate x LoRA rank
(8 trials); each trial is a 1-worker rayft run of 12 optimizer steps evaluated every 3. Both sweeps run
on one local Ray cluster, 2 trials at a time: first FIFO (every trial to the end), then ASHA (grace 3
steps, reduction factor 2). Printed: wall time, trials per hour, trial CPU-hours (each trial's time x
the CPUs its Ray Train worker holds), optimizer steps trained, and the best eval/loss each sweep found.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _peer  # noqa: E402

STEPS, EVAL_EVERY, CONCURRENT = 12, 3, 2
SPACE = {"train.learning_rate": {"grid": [3e-3, 1e-3, 3e-4, 3e-5]}, "tuning.rank": {"grid": [4, 16]}}


def base_run(work: Path) -> dict:
    from rayft.demo import write_data
    from rayft_core.model.tiny import build_tiny_model, build_tokenizer

    lines, _ = write_data(work / "data")
    tokenizer = build_tokenizer(lines, vocab_size=400)
    model = build_tiny_model("llama", tokenizer, work / "base", hidden_size=128, num_layers=4)
    return {
        "model": {"name_or_path": str(model)},
        "stage": "sft",
        "tuning": {"method": "lora", "rank": 8, "alpha": 16, "target": "all"},
        "data": {
            "train": [{"path": str(work / "data" / "successor_train.jsonl"), "format": "alpaca"}],
            "val_size": 16,
            "max_seq_len": 64,
        },
        "train": {"max_steps": STEPS, "eval_steps": EVAL_EVERY, "micro_batch_size": 8, "logging_steps": EVAL_EVERY},
        "deepspeed": {"zero_stage": 2},
        "cluster": {"num_workers": 1},
        "output": {"storage_path": str(work / "sweeps")},
    }


def run_sweep(base: dict, scheduler: str) -> dict:
    from rayft.tune import sweep
    from rayft_core.config import validate_config

    raw = {**base, "output": {**base["output"], "name": scheduler}}
    config = validate_config(
        {
            **raw,
            "tune": {
                "space": SPACE,
                "search": "grid",
                "num_samples": 1,
                "scheduler": scheduler,
                "grace_period": EVAL_EVERY,
                "max_concurrent_trials": CONCURRENT,
            },
        }
    ).tune
    started = time.perf_counter()
    result = sweep(raw, config)
    wall = time.perf_counter() - started
    cpus = raw["cluster"]["num_workers"]  # one CPU per worker (a sweep's trials under cluster.cpus_per_worker: auto)
    return {
        "wall_s": wall,
        "trials": len(result.rows),
        "stopped": sum(r.state == "stopped early" for r in result.rows),
        "cpu_h": sum((r.seconds or 0) * cpus for r in result.rows) / 3600,
        "steps": sum(r.steps or 0 for r in result.rows),
        "best": result.best.metric,
        "best_params": result.best.params,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--wait-idle", type=float, default=None, help="wait up to this many seconds for a quiet machine"
    )
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown")
    args = parser.parse_args()

    from rayft.cluster import connect

    work = Path(tempfile.mkdtemp(prefix="rayft-tune-bench-"))
    base = base_run(work)
    if args.wait_idle:
        print("machine:", _peer.wait_idle(args.wait_idle, load=0.5))
    connect()
    results = {name: run_sweep(base, name) for name in ("fifo", "asha")}

    fifo, asha = results["fifo"], results["asha"]
    rows = [("full grid (FIFO)", fifo), ("ASHA", asha)]
    header = f"{'':18} {'wall s':>8} {'trials/h':>9} {'stopped':>8} {'CPU-h':>7} {'steps':>6} {'best eval/loss':>15}"
    print("\n" + header)
    for name, r in rows:
        print(
            f"{name:18} {r['wall_s']:8.1f} {r['trials'] / r['wall_s'] * 3600:9.1f} {r['stopped']:8d} "
            f"{r['cpu_h']:7.3f} {r['steps']:6d} {r['best']:15.4f}"
        )
    print(
        f"\nASHA / grid: wall {asha['wall_s'] / fifo['wall_s']:.2f}x, CPU-hours {asha['cpu_h'] / fifo['cpu_h']:.2f}x "
        f"({(1 - asha['cpu_h'] / fifo['cpu_h']) * 100:.0f}% saved), steps {asha['steps'] / fifo['steps']:.2f}x; "
        f"best eval/loss {asha['best']:.4f} vs {fifo['best']:.4f} ({asha['best_params']} vs {fifo['best_params']})"
    )
    if args.markdown:
        lines = [
            "| | wall s | trials/h | stopped early | trial CPU-h | steps trained | best eval/loss |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {r['wall_s']:.1f} | {r['trials'] / r['wall_s'] * 3600:.1f} | {r['stopped']} | "
            f"{r['cpu_h']:.3f} | {r['steps']} | {r['best']:.4f} |"
            for name, r in rows
        ]
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
