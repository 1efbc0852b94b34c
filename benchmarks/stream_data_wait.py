"""Do streamed workers wait for data? A streamed, interleaved run on N workers, and the share of each step that
rank 0 spent blocked on its next batch (perf/data_wait_s against the step's time), once the pipeline is warm.

    .venv/bin/python benchmarks/stream_data_wait.py --model DIR            # a real model (real-model.sh DIR)
    .venv/bin/python benchmarks/stream_data_wait.py                        # a tiny model (label its figures so)

Data: alpaca_en_demo and alpaca_zh_demo from the shared data folder, interleaved 0.5 / 0.5 (all_exhausted), or
generated alpaca rows where that folder is absent. Every step logs; the step's time is its rows over
perf/samples_per_s. Printed: each step's time and wait, the wait's share of the time over the steps after
--warmup, each worker's total wait (summary.json) and where the stream's rows were tokenized.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def datasets(work: Path) -> list[dict]:
    names = ["alpaca_en_demo.json", "alpaca_zh_demo.json"]
    if all((SHARED_DATA / n).is_file() for n in names):
        return [{"path": str(SHARED_DATA / n), "format": "alpaca"} for n in names]
    print(f"{SHARED_DATA} is absent: generated rows instead")
    out = []
    for k in range(2):
        path = work / f"generated-{k}.jsonl"
        path.write_text(
            "".join(
                json.dumps({"instruction": f"Question {k}-{i}: " + "why " * (i % 50), "output": "because " * 40}) + "\n"
                for i in range(2000)
            )
        )
        out.append({"path": str(path), "format": "alpaca"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="A model directory (default: a tiny Llama, built here).")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=5, help="Steps left out of the share (the pipeline filling).")
    args = parser.parse_args()

    from rayft.train import train
    from rayft_core.config import validate_config
    from rayft_core.train.outputs import read_metrics

    work = Path(tempfile.mkdtemp(prefix="rayft-wait-"))
    model = args.model
    if model is None:
        from rayft_core.model.tiny import build_tiny_model, build_tokenizer

        model = str(build_tiny_model("llama", build_tokenizer(["why because question"] * 50), work / "model"))
        print("a tiny model: its steps are short, so any wait shows large")
    run = validate_config(
        {
            "model": {"name_or_path": model},
            "data": {
                "train": datasets(work),
                "streaming": True,
                "mix": "interleave",
                "mix_stopping": "all_exhausted",
                "max_seq_len": args.max_seq_len,
            },
            "train": {"max_steps": args.steps, "micro_batch_size": args.micro_batch, "logging_steps": 1},
            "cluster": {"num_workers": args.workers},
            "output": {"storage_path": str(work / "runs"), "name": "wait"},
        }
    )
    out = Path(train(run, progress=False))
    rows = [r for r in read_metrics(out) if "train/loss" in r]
    per_step = args.micro_batch * args.workers
    print(f"\n{'step':>5} {'step s':>8} {'wait s':>8} {'share':>7}")
    shares = []
    for r in rows:
        step_s = per_step / r["perf/samples_per_s"]
        share = r["perf/data_wait_s"] / step_s
        if r["step"] > args.warmup:
            shares.append(share)
        print(f"{r['step']:>5} {step_s:>8.3f} {r['perf/data_wait_s']:>8.3f} {share:>7.1%}")
    summary = json.loads((out / "summary.json").read_text())
    waited = sum(r["perf/data_wait_s"] for r in rows if r["step"] > args.warmup)
    spent = sum(per_step / r["perf/samples_per_s"] for r in rows if r["step"] > args.warmup)
    print(
        f"\nafter step {args.warmup}: rank 0 waited {waited:.2f} s of {spent:.1f} s ({waited / spent:.1%}); "
        f"median step share {statistics.median(shares):.1%}, worst {max(shares):.1%}"
    )
    print("each worker's wait over the whole run (s):", summary["data_wait_seconds_per_worker"])
    print("stream chunks tokenized per node:", summary.get("stream_chunks_tokenized_per_node"))
    shares_logged = {k: v for k, v in rows[-1].items() if k.startswith("data/share/")}
    print("realised shares:", shares_logged)


if __name__ == "__main__":
    main()
