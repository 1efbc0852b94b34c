"""Activation memory per worker with sequence parallelism: two workers pre-training on long rows, each with whole
sequences (data parallel, cluster.sequence_parallel_size 1) against the two splitting every sequence (2).

    .venv/bin/python benchmarks/sequence_parallel_memory.py --seq 4096 8192 16384 --wait-idle

A small model on purpose (a random 4-layer Llama, hidden 512, heads of 128, a 32k vocabulary: 46M parameters), so
that the sequence, not the weights, fills the workers, and so that 16k tokens of attention run on 2 CPU cores at
all. Each run is `rayft train` as a whole process: ZeRO-2, one row a micro-batch, one step of rows cut to --seq
tokens from long documents, no packing, no gradient checkpointing, glibc returning freed large blocks
(zero3_memory.LIVE_MEMORY: else the heap keeps every micro-step's high-water mark and hides what is live). Printed per length: the largest worker's peak
RSS (VmHWM) for SP=1 and SP=2, and each one's activations, taken as its peak minus the same configuration's
peak at --short tokens (weights, optimizer states and the framework cost the same at both lengths).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._peer import add_idle_arguments, fresh_dir, wait_idle  # noqa: E402
from benchmarks.zero3_memory import REPO, build_model, measure_workers  # noqa: E402


def corpus(path: Path, tokens: int) -> Path:
    """Eight documents of about ``tokens`` x 4 words each (random words of the examples' corpus): every row the runs
    train on is a full --seq piece of one."""
    words = (REPO / "examples/data/corpus.txt").read_text().split()
    rng = random.Random(0)
    path.write_text("\n".join(" ".join(rng.choices(words, k=tokens * 4)) for _ in range(8)) + "\n")
    return path


def run_yaml(model: Path, data: Path, work: Path, name: str, seq: int, sp: int) -> Path:
    import yaml

    config = {
        "model": {"name_or_path": str(model), "gradient_checkpointing": False},
        "stage": "pt",
        "tuning": "full",
        "data": {
            "train": [{"path": str(data), "format": "text"}],
            "max_seq_len": seq,
            "packing": False,
            "shuffle": False,
        },
        "train": {"max_steps": 1, "micro_batch_size": 1, "learning_rate": 1e-5, "logging_steps": 1},
        "deepspeed": {"zero_stage": 2},
        "cluster": {"num_workers": 2, "sequence_parallel_size": sp},
        "output": {"storage_path": str(work / "runs"), "name": name, "overwrite": True},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rayft-sp-memory"))
    ap.add_argument("--seq", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--short", type=int, default=256, help="the length whose peak is subtracted")
    add_idle_arguments(ap)
    args = ap.parse_args()
    work = args.work
    if not (work / ".rayft-benchmark").is_file():
        fresh_dir(work)
    model = work / f"model-{max(args.seq)}"
    n = build_model(model, hidden=512, layers=4, kv_heads=2, positions=max(args.seq))
    print(f"model (small): Llama, 4 layers, hidden 512, {n / 1e6:.0f}M parameters", flush=True)
    data = corpus(work / "long.txt", max(args.seq))
    results = []
    for seq in [args.short, *args.seq]:
        for sp in (1, 2):
            config = run_yaml(model, data, work, f"seq{seq}-sp{sp}", seq, sp)
            wait_idle(args.wait_idle, args.idle_load)
            cmd = [sys.executable, "-m", "rayft.cli", "train", str(config)]
            env = {"PYTHONPATH": f"{REPO / 'core'}:{REPO}"}
            r = measure_workers(cmd, REPO, env, work / f"{config.stem}.log")
            r.update(seq=seq, sp=sp, peak_gb=max(r["worker_peaks_gb"] or [0]))
            results.append(r)
            print(json.dumps(r), flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    floor = {r["sp"]: r["peak_gb"] for r in results if r["seq"] == args.short}
    peak = {(r["seq"], r["sp"]): r for r in results}
    print(f"\n{'tokens':>7} {'SP=1 peak':>10} {'SP=2 peak':>10} {'SP=1 act.':>10} {'SP=2 act.':>10} {'ratio':>6}")
    for seq in args.seq:
        one, two = peak[seq, 1], peak[seq, 2]
        act1, act2 = one["peak_gb"] - floor[1], two["peak_gb"] - floor[2]
        failed = "" if one["rc"] == two["rc"] == 0 else f"  (exit {one['rc']}, {two['rc']})"
        ratio = f"{act2 / act1:.2f}x" if act1 > 0 else "-"
        print(
            f"{seq:>7} {one['peak_gb']:>7.2f} GB {two['peak_gb']:>7.2f} GB {act1:>7.2f} GB {act2:>7.2f} GB "
            f"{ratio:>6}{failed}"
        )


if __name__ == "__main__":
    main()
