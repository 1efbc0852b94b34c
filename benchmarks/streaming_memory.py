"""Streaming keeps memory flat: a dataset several times larger than Ray's object store flows through
rayft's pipeline (read -> align -> template + tokenize -> pack) to a consumer, while driver and worker
memory stay bounded.

    .venv/bin/python benchmarks/streaming_memory.py --gb 1.0 --object-store-mb 256

It writes --gb of alpaca JSONL rows, all different, as 64 MB files (a dataset is many files; each
file is read in turn by the stream's reading task), starts a local Ray cluster with a small object store,
and reads the run's data with `data.streaming: true` exactly as a `rayft train` worker does (rayft.stream:
one worker's share, here all of it), in its micro-batches. A sampler records, every 0.5 s, the RSS of the driver, of the largest Ray worker
process and of the whole process tree, and the object store bytes in use. Printed: rows and bytes
streamed, time, and each peak; compared with the same figures at a quarter of the data, a flat
pipeline shows the same peaks at both sizes.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = (
    "ray data streams rows through tasks that tokenize them while workers train on what arrives and "
    "nothing waits for the whole dataset to be read the object store holds only blocks in flight"
).split()


def write_dataset(folder: Path, total_bytes: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = written = part = 0
    f = None
    while written < total_bytes:
        if f is None or f.tell() > 64 * 2**20:
            if f:
                f.close()
            f = open(folder / f"part-{part:04d}.jsonl", "w")
            part += 1
        line = (
            json.dumps(
                {
                    "instruction": f"[{rows}] " + " ".join(rng.choices(WORDS, k=40)),
                    "input": "",
                    "output": " ".join(rng.choices(WORDS, k=120)),
                }
            )
            + "\n"
        )
        f.write(line)
        written += len(line)
        rows += 1
    f.close()
    return rows


class Sampler(threading.Thread):
    """Peak memory of the driver, the largest other process of its tree, the tree, and the object store."""

    def __init__(self):
        super().__init__(daemon=True)
        self.me = psutil.Process()
        self.peaks = {"driver_gb": 0.0, "largest_worker_gb": 0.0, "tree_gb": 0.0, "object_store_gb": 0.0}
        self.stop = threading.Event()

    def run(self) -> None:
        import ray

        while not self.stop.is_set():
            procs = [self.me] + self.me.children(recursive=True)
            rss = {}
            for p in procs:
                try:
                    rss[p.pid] = p.memory_info().rss / 2**30
                except psutil.Error:
                    pass
            used = 0.0
            try:
                total, free = ray.cluster_resources(), ray.available_resources()
                used = (total.get("object_store_memory", 0) - free.get("object_store_memory", 0)) / 2**30
            except Exception:  # the cluster is starting or stopping
                pass
            self._peak("driver_gb", rss.get(self.me.pid, 0))
            self._peak("largest_worker_gb", max((v for k, v in rss.items() if k != self.me.pid), default=0))
            self._peak("tree_gb", sum(rss.values()))
            self._peak("object_store_gb", used)
            self.stop.wait(0.5)

    def _peak(self, key: str, value: float) -> None:
        self.peaks[key] = max(self.peaks[key], value)


def stream(data_dir: Path, model_dir: Path, object_store_mb: int) -> dict:
    import ray

    from rayft.stream import WorkerStream
    from rayft_core.config import validate_config

    run = validate_config(
        {
            "model": {"name_or_path": str(model_dir)},
            "data": {
                "train": [{"path": str(data_dir), "format": "alpaca"}],
                "streaming": True,
                "packing": True,
                "max_seq_len": 512,
            },
            "train": {"max_steps": 1, "micro_batch_size": 8},
        }
    ).with_absolute_paths()
    ray.init(num_cpus=4, object_store_memory=object_store_mb * 2**20, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    stream = WorkerStream(run, 0, 1, ["input_ids", "labels", "position_ids", "num_examples", "num_tokens"])
    rows = tokens = bad = 0
    for batch in stream.epoch(0):  # what a worker's stream yields, one pass
        rows += int(sum(batch["num_examples"]))
        tokens += int(sum(batch["num_tokens"]))
        bad += sum(e is not None for e in batch["error"])
    elapsed = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    ray.shutdown()
    return {
        "examples": rows,
        "tokens": tokens,
        "bad_rows": bad,
        "seconds": round(elapsed, 1),
        **{k: round(v, 2) for k, v in sampler.peaks.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="Size of the generated dataset.")
    parser.add_argument("--object-store-mb", type=int, default=256, help="Ray's object store for the run.")
    parser.add_argument("--workdir", default=None, help="Where to write the data (default: a temp dir).")
    args = parser.parse_args()

    from rayft_core.model.tiny import build_tiny_model, build_tokenizer

    work = Path(args.workdir or tempfile.mkdtemp(prefix="rayft-stream-"))
    tokenizer = build_tokenizer([" ".join(WORDS)] * 50, vocab_size=400)
    model_dir = build_tiny_model("llama", tokenizer, work / "model")
    results = {}
    for label, gb in (("quarter", args.gb / 4), ("full", args.gb)):
        data_dir = work / f"data-{label}"
        written_rows = write_dataset(data_dir, int(gb * 2**30))
        size = sum(p.stat().st_size for p in data_dir.iterdir()) / 2**30
        # each size in a fresh process: a second ray.init in one driver would carry the first one's memory
        out = (
            subprocess.run(
                [sys.executable, __file__, "--one", str(data_dir), str(model_dir), str(args.object_store_mb)],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        results[label] = {"dataset_gb": round(size, 2), "rows": written_rows, **json.loads(out)}
        assert results[label]["examples"] == written_rows, results[label]  # every row arrived, none dropped
    print(f"\nobject store: {args.object_store_mb} MB; dataset files of 64 MB; 4 logical CPUs\n")
    keys = ["dataset_gb", "rows", "seconds", "driver_gb", "largest_worker_gb", "tree_gb", "object_store_gb"]
    print(f"{'':<10}" + "".join(f"{k:>18}" for k in keys))
    for label, r in results.items():
        print(f"{label:<10}" + "".join(f"{r[k]:>18,}" for k in keys))
    out = Path(__file__).parent / "results" / "streaming_memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--one":
        print(json.dumps(stream(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))))
    else:
        main()
