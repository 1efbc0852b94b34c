"""Memory of the largest Ray Train worker, full-parameter pre-training of a Llama: ZeRO-0 on one worker against
ZeRO-2 and ZeRO-3 on two, for this checkout and (--before REV) an earlier commit, one run at a time.

    .venv/bin/python benchmarks/zero3_memory.py --before ea4429b --hidden 1024 --wait-idle

Each run is `rayft train` as a whole process on a random-weight Llama (--hidden 1536: 0.70B parameters, fp32
weights 2.8 GB; --hidden 1024: 0.35B; 24 layers, a 32k vocabulary; built once under --work) for --steps steps of
pre-training at --seq tokens, with glibc returning freed large blocks (LIVE_MEMORY). A sampler reads every Ray
Train worker's peak RSS (the kernel's VmHWM) every half
second. Printed: the largest worker's peak per configuration and version, its ratio to ZeRO-0 x1, the run's wall
time, and rayft's own estimate of the same run (`rayft config validate`'s table, rayft_core.train.memory) beside
it. --before runs that commit's code from a git worktree, with this checkout's virtual environment.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._peer import (  # noqa: E402
    add_idle_arguments,
    fresh_dir,
    log_output,
    offline_env,
    spawn,
    terminate_leftovers,
    wait_idle,
)

REPO = Path(__file__).resolve().parents[1]
# glibc raises its mmap threshold as large blocks are freed, after which freed activations stay in the process's
# heap: its RSS then keeps the high-water mark of every micro-step's pattern, not what is live. A fixed threshold
# returns each large block to the system when PyTorch frees it (GPU runs measure their caching allocator instead).
LIVE_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "65536"}
CONFIGS = {  # name -> (workers, deepspeed section)
    "ZeRO-0 x1": (1, {"zero_stage": 0}),
    "ZeRO-2 x2": (2, {"zero_stage": 2}),
    "ZeRO-3 x2": (2, {"zero_stage": 3}),
    # DeepSpeed keeps up to 1e9 gathered parameters alive by default: at this size the whole model stays gathered
    "ZeRO-3 x2 max_live 5e7": (2, {"zero_stage": 3, "max_live_parameters": 50_000_000}),
}  # optimizer offload is left out: it moves states from GPU to CPU memory, and rayft refuses it without a GPU


def build_model(out: Path, hidden: int, layers: int = 24, kv_heads: int = 4, positions: int = 4096) -> int:
    """A random Llama of heads of 128 (a 32k vocabulary; the BPE tokenizer trained on the corpus uses its first
    ids), built once; returns its parameter count."""
    if (out / "config.json").is_file():
        return json.loads((out / "parameters.json").read_text())["parameters"]
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from rayft_core.model.tiny import build_tokenizer

    tok = build_tokenizer((REPO / "examples/data/corpus.txt").read_text().splitlines() * 4, save_dir=out)
    config = LlamaConfig(
        vocab_size=32_000, hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
        num_attention_heads=hidden // 128,
        num_key_value_heads=kv_heads, max_position_embeddings=positions, tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    (out / "parameters.json").write_text(json.dumps({"parameters": n}))
    return n


def run_yaml(model: Path, work: Path, name: str, workers: int, deepspeed: dict, args: argparse.Namespace) -> Path:
    import yaml

    config = {
        "model": {"name_or_path": str(model)},
        "stage": "pt",
        "tuning": "full",
        "data": {
            "train": [{"path": str(REPO / "examples/data/corpus.txt"), "format": "text"}],
            "max_seq_len": args.seq,
        },
        "train": {"max_steps": args.steps, "micro_batch_size": 1, "learning_rate": 1e-5, "logging_steps": 1},
        "deepspeed": deepspeed,
        "cluster": {"num_workers": workers},
        "output": {"storage_path": str(work / "runs"), "name": name, "overwrite": True},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def is_train_worker(p: psutil.Process) -> bool:
    try:
        return "RayTrainWorker" in " ".join(p.cmdline())
    except psutil.Error:
        return False


def memory_status(pid: int) -> dict[str, int]:
    """The process's peak resident set so far (VmHWM: the kernel's high-water mark, file-backed pages such as a
    memory-mapped checkpoint included) and its anonymous resident memory now (RssAnon), in bytes."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in lines) if k in ("VmHWM", "RssAnon")}


def measure_workers(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> dict:
    """Run cmd to exit in ``cwd``; each Ray Train worker's peak RSS (its VmHWM, read every half second until it
    exits: a peak between two reads is not missed, unlike a sampled PSS), its largest anonymous memory seen in
    those reads (RssAnon: what it allocated, without the files it maps; a peak between reads can be missed) and
    the wall time."""
    peaks: dict[int, int] = {}
    anon: dict[int, int] = {}
    t0 = time.perf_counter()
    proc = spawn(cmd, cwd, offline_env({**LIVE_MEMORY, **env}))
    reader = log_output(proc, log, t0)
    while proc.poll() is None:
        for p in psutil.process_iter():
            if is_train_worker(p):
                status = memory_status(p.pid)
                peaks[p.pid] = max(peaks.get(p.pid, 0), status.get("VmHWM", 0))
                anon[p.pid] = max(anon.get(p.pid, 0), status.get("RssAnon", 0))
        time.sleep(0.5)
    reader.join(timeout=10)
    terminate_leftovers(proc.pid)
    return {
        "rc": proc.returncode,
        "wall_s": time.perf_counter() - t0,
        "worker_peaks_gb": sorted(v / 1e9 for v in peaks.values()),
        "worker_anon_gb": sorted(v / 1e9 for v in anon.values()),
    }


def estimate(config: Path) -> float | None:
    """rayft's own estimate of the run's largest worker (GB), from `rayft config validate`."""
    out = subprocess.run(
        [sys.executable, "-m", "rayft.cli", "config", "validate", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=offline_env({"PYTHONPATH": f"{REPO / 'core'}:{REPO}"}),
    ).stdout
    totals = [line.split()[1] for line in out.splitlines() if line.strip().startswith("total")]
    return float(totals[0]) * 2**30 / 1e9 if totals else None


def checkout(rev: str, work: Path) -> Path:
    """A git worktree of ``rev`` (its code runs with this checkout's environment via PYTHONPATH)."""
    path = work / f"src-{rev}"
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=REPO, check=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rayft-zero3-memory"))
    ap.add_argument("--before", help="also run this git revision (the code before a change)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=1536, help="the model's width: 1536 (0.70B), 1024 (0.35B)")
    ap.add_argument("--only", nargs="*", help="run only these configurations (names as printed)")
    add_idle_arguments(ap)
    args = ap.parse_args()
    work = args.work
    model = work / f"model-{args.hidden}"
    if not (model / "config.json").is_file() and not (work / ".rayft-benchmark").is_file():
        fresh_dir(work)
    n = build_model(model, args.hidden)
    print(f"model: Llama, {n / 1e9:.2f}B parameters, fp32 weights {n * 4 / 1e9:.1f} GB", flush=True)
    versions = {"this checkout": REPO}
    if args.before:
        versions[f"before ({args.before})"] = checkout(args.before, work)
    results = []
    for name, (workers, deepspeed) in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        config = run_yaml(model, work, name.replace(" ", "_").replace("+", "plus"), workers, deepspeed, args)
        expected = estimate(config)  # before the run: validate refuses a run directory that exists
        for version, src in versions.items():
            wait_idle(args.wait_idle, args.idle_load)
            env = {"PYTHONPATH": f"{src / 'core'}:{src}"}  # `python -m` puts the cwd first: run in src
            cmd = [sys.executable, "-m", "rayft.cli", "train", str(config)]
            r = measure_workers(cmd, src, env, work / f"{config.stem}-{len(results)}.log")
            r.update(config=name, version=version, estimate_gb=expected if src == REPO else None)
            results.append(r)
            print(json.dumps(r), flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    base = {r["version"]: max(r["worker_peaks_gb"] or [0]) for r in results if r["config"] == "ZeRO-0 x1"}
    anon_base = {r["version"]: max(r["worker_anon_gb"] or [0]) for r in results if r["config"] == "ZeRO-0 x1"}
    print(
        f"\n{'configuration':<26} {'version':<22} {'peak RSS':>9} {'vs x1':>6} {'anon':>8} {'vs x1':>6} "
        f"{'estimate':>9} {'wall':>6}"
    )
    for r in results:
        peak, anon = max(r["worker_peaks_gb"] or [0]), max(r["worker_anon_gb"] or [0])
        ratio = f"{peak / base[r['version']]:.2f}x" if base.get(r["version"]) else "-"
        anon_ratio = f"{anon / anon_base[r['version']]:.2f}x" if anon_base.get(r["version"]) else "-"
        est = f"{r['estimate_gb']:.1f} GB" if r["estimate_gb"] else "-"
        status = "" if r["rc"] == 0 else f"  (exit {r['rc']})"
        print(
            f"{r['config']:<26} {r['version']:<22} {peak:>6.2f} GB {ratio:>6} {anon:>5.2f} GB {anon_ratio:>6} "
            f"{est:>9} {r['wall_s']:>5.0f}s{status}"
        )


if __name__ == "__main__":
    main()
