""".venv/bin/python benchmarks/scaling.py [--steps 14] [--warmup 4] [--wait-idle [MAX_S]] [--idle-load L]
                                        [--retries N] [--skip RUN ...] [--markdown FILE]

How rayft scales on this machine, each configuration a real `rayft train` run (a subprocess with a fresh Ray
cluster), one after the other (never concurrently), measured side by side in one invocation:

1. workers: 1 vs 2 workers at the same global batch (8 rows of 256 tokens per optimizer step), ZeRO-2:
   1 worker x micro-batch 4 x accumulation 2 vs 2 workers x micro-batch 4 x accumulation 1; tokens/s.
   Ray gives a worker as many torch threads as CPUs it reserves (OMP_NUM_THREADS = cluster.cpus_per_worker,
   default 1), so the fair 1-worker run reserves 2 CPUs (2 threads on the 2 cores); the 1-worker run with
   rayft's default of 1 CPU (1 thread, one core idle) is measured too, as what a user gets without that setting.
2. ZeRO-2 vs ZeRO-3, 2 workers: step time and per-worker memory. rayft's `mem/peak_gb` on CPU is the worker
   process's max RSS (getrusage), the high-water mark of the whole run; every worker loads the whole model before
   DeepSpeed partitions it (no zero.Init), so that peak includes the load. Beside it, the RSS of each Ray Train
   worker process sampled here every 0.5 s during the steady steps (after --warmup), where partitioning shows.
3. Time from submit to first step: a real Ray cluster (`ray start --head --block` on free ports, its own
   --temp-dir, token authentication on: RAY_AUTH_MODE=token and a fresh token in RAY_AUTH_TOKEN, the same two
   settings for the client, which Ray's job SDK turns into an `Authorization: Bearer` header; an unauthenticated
   request is checked to be refused), then `ray job submit --working-dir <this checkout> --runtime-env-json
   '{"py_modules": [core/rayft_core], "excludes": [...], "env_vars": {...}}' -- rayft train run.yaml`: the
   rayft and rayft_core packages the job runs are the uploaded copies (printed by the job). Measured from the
   submit command's start to the first line of metrics.jsonl appearing (polled every 0.1 s), and to the job's
   end (the command returns when the job has ended). The same configuration as the local 2-worker ZeRO-2 run,
   whose `rayft train` (embedded local cluster) gives the comparison: command start to first step and to exit.
   The cluster's own start (to its job API answering) is reported apart. A fresh cluster per attempt, stopped
   after it and at any exit (its process group only: never `ray stop`, which ends every Ray on the machine).
   The runs get this checkout's rayft (PYTHONPATH; the job: its uploaded copy), whatever the venv installed.

Model and data: a random-init Llama (hidden --hidden, --layers layers, untied head) with the Qwen2.5 tokenizer
(vocab 151,665; ../shared/fixtures/tokenizers), 80M parameters at hidden 256 of which 78M are the embedding and
the head (as in small real models, where the vocabulary is a large share); alpaca_en_demo (../shared/data) packed
into 256-token rows (~98% filled, so every step trains ~2,000 tokens), SFT, fp32, AdamW, constant lr, no shuffling.
Full-parameter training throughout: with all 80M parameters trained, ZeRO-2 partitions their gradients and optimizer
states and ZeRO-3 the weights too (with LoRA, ~1M trained parameters, the two would differ little); and for the
worker comparison full training is where data parallelism pays its real cost, a reduce-scatter of the 80M
gradients over gloo every step (LoRA would exchange ~1M and hide it).

Steady state: the first --warmup steps are left out (the first steps are slower: allocator growth, Ray Data's
pipeline filling, lazy initialisation). metrics.jsonl has one line per step (logging_steps 1); a step's duration is
its rows / its perf/samples_per_s, its tokens perf/tokens_per_s x that duration (both summed over workers by rayft);
steady tokens/s = sum of tokens / sum of durations over the steady steps; step time = their mean duration. A step's
duration includes `ray.train.report`, which waits for the Train controller's poll (0.5 s interval, rayft's setting).

The machine is shared: before each run, --wait-idle waits for a quiet machine (1-min load average below
--idle-load, at most MAX_S); the CPU seconds every other process used during a run are measured ("others' cores":
their average number of busy cores), and with --retries a run whose others' cores exceed 0.25 is run again, the
least contended attempt kept. The load average at each run's start is printed and kept.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml
from _peer import (
    OFFLINE,
    TOKENIZER,
    add_idle_arguments,
    build_model,
    busy_cpu_s,
    fresh_dir,
    log_output,
    offline_env,
    process_tree,
    session_id,
    spawn,
    terminate_leftovers,
    wait_idle,
)
from _ray_head import Cluster

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's rayft and ray commands
DATA_DIR = Path("/work/shared/data")
WORK = Path("/tmp/rayft-scaling")
RESULTS = ROOT / "benchmarks" / "results"
EXT_DIR = WORK / "torch_extensions"
MICRO, SEQ, GLOBAL_ROWS, LR, SEED = 4, 256, 8, 1e-4, 42
CONTENDED = 0.25  # other processes using more cores than this on average: a contended measurement
TRAIN_POLL = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}  # what rayft's embedded cluster sets (rayft/cluster.py)
# DeepSpeed JIT-compiles its CPU shared-memory collectives (deepspeed_shm_comm) into TORCH_EXTENSIONS_DIR, by default
# ~/.cache/torch_extensions, shared by every venv of the user, with the first `ninja` on PATH: another venv's build
# there, or a build by another ninja (the venv's 1.13 vs the system's 1.11: each takes the other's build for stale),
# makes the next run recompile it (40-100 s on 2 busy cores, seen while writing this). A directory of the benchmark's
# own, built once before measuring, and the same PATH (the venv's bin first, as an activated venv has it) for every
# run and the cluster keep a compile out of the time to first step.
EXTENSIONS = {"TORCH_EXTENSIONS_DIR": str(EXT_DIR)}

# name -> (label, workers, CPUs per worker, ZeRO stage, where)
RUNS = {
    "w1-c2-z2": ("1 worker, 2 CPUs, ZeRO-2", 1, 2, 2, "local"),
    "w1-c1-z2": ("1 worker, 1 CPU (default), ZeRO-2", 1, 1, 2, "local"),
    "w2-z2": ("2 workers, ZeRO-2", 2, 1, 2, "local"),
    "w2-z3": ("2 workers, ZeRO-3", 2, 1, 3, "local"),
    "job-w2-z2": ("2 workers, ZeRO-2, ray job submit", 2, 1, 2, "job"),
}


def run_config(name: str, model: Path, steps: int) -> dict:
    _, workers, cpus, zero, _ = RUNS[name]
    return {
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "stage": "sft",
        "tuning": {"method": "full"},
        "data": {
            "train": [{"dataset": "alpaca_en_demo"}],
            "dataset_dir": str(DATA_DIR),
            "max_seq_len": SEQ,
            "packing": True,
            "shuffle": False,
        },
        "train": {
            "max_steps": steps,
            "micro_batch_size": MICRO,
            "gradient_accumulation_steps": GLOBAL_ROWS // (MICRO * workers),
            "learning_rate": LR,
            "lr_scheduler": "constant",
            "warmup_ratio": 0.0,
            "weight_decay": 0.0,
            "logging_steps": 1,
            "seed": SEED,
        },
        "deepspeed": {"zero_stage": zero},
        "cluster": {"num_workers": workers, "cpus_per_worker": cpus},
        "output": {"storage_path": str(WORK / name / "out"), "name": "run", "overwrite": True},
    }


RUNNING: list[subprocess.Popen] = []  # the command being measured, ended with its session on SIGTERM


def _end_running() -> None:
    for proc in RUNNING:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(5)


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return 0


def _is_train_worker(p: psutil.Process) -> bool:
    try:
        cmd = p.cmdline()
        return bool(cmd) and cmd[0].startswith("ray::RayTrainWorker")
    except psutil.Error:
        return False


def measure_run(
    cmd: list[str],
    cwd: Path,
    log: Path,
    env: dict[str, str],
    metrics: Path,
    warmup: int,
    steps: int,
    extra_sids: tuple[int, ...] = (),
) -> dict:
    """Run cmd to exit in a session of its own, as _peer.measure does (wall time; peak summed RSS of its process tree
    and of the sessions in extra_sids, e.g. a running cluster's; CPU seconds of that tree and of every other process
    meanwhile; output lines with their time into `log`), and besides: when metrics.jsonl gets its first line (polled
    every 0.1 s), and the RSS of every Ray Train worker process sampled every 0.5 s from when `warmup` steps are logged
    until the last step is (not while the model is saved)."""
    env = offline_env(env)
    sids = set(extra_sids)
    before: dict[tuple[int, float], float] = {}  # CPU seconds the extra sessions' processes had used before the run
    for p in psutil.process_iter():
        if session_id(p.pid) in sids:
            try:
                c = p.cpu_times()
                before[(p.pid, p.create_time())] = c.user + c.system
            except psutil.Error:
                pass
    cpu: dict[tuple[int, float], float] = {}
    worker_rss: dict[tuple[int, float], float] = {}  # steady-state max RSS per Ray Train worker process (bytes)
    workers: set[tuple[int, float]] = set()
    peak_rss, first_step_s, polls = 0, None, 0
    load0, busy0, t0 = os.getloadavg()[0], busy_cpu_s(), time.perf_counter()
    proc = spawn(cmd, cwd, env)
    RUNNING.append(proc)

    reader = log_output(proc, log, t0)
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        lines = _lines(metrics) if first_step_s is None or polls % 5 == 0 else 0
        if first_step_s is None and lines > 0:
            first_step_s = time.perf_counter() - t0
        if polls % 5 == 0:  # every 0.5 s: the process tree
            steady = warmup <= lines < steps
            procs = process_tree(root, proc.pid) + [p for p in psutil.process_iter() if session_id(p.pid) in sids]
            rss = 0
            for p in {p.pid: p for p in procs}.values():
                try:
                    with p.oneshot():
                        key = (p.pid, p.create_time())
                        m, c = p.memory_info(), p.cpu_times()
                    cpu[key] = c.user + c.system
                    rss += m.rss
                    if steady and (key in workers or _is_train_worker(p)):
                        workers.add(key)
                        worker_rss[key] = max(worker_rss.get(key, 0), m.rss)
                except psutil.Error:
                    pass
            peak_rss = max(peak_rss, rss)
        polls += 1
        time.sleep(0.1)
    wall, busy = time.perf_counter() - t0, busy_cpu_s() - busy0
    RUNNING.remove(proc)
    reader.join(timeout=10)
    leftovers = terminate_leftovers(proc.pid)
    tree_cpu = sum(v - before.get(k, 0.0) for k, v in cpu.items())
    return {
        "rc": proc.returncode,
        "wall_s": wall,
        "first_step_s": first_step_s,
        "peak_rss_gib": peak_rss / 2**30,
        "cpu_s": tree_cpu,
        "other_cpu_s": busy - tree_cpu,
        "contention": (busy - tree_cpu) / wall,
        "load1_at_start": load0,
        "steady_worker_rss_gib": sorted(round(v / 2**30, 3) for v in worker_rss.values()),
        "leftover_processes": leftovers,
        "log": str(log),
    }


def steady_state(metrics: Path, warmup: int) -> dict:
    rows = sorted(
        (json.loads(line) for line in metrics.read_text().splitlines() if line.strip()), key=lambda r: r["step"]
    )
    rows = [r for r in rows if "perf/samples_per_s" in r]
    steady = [r for r in rows if r["step"] > warmup]
    durations = [GLOBAL_ROWS / r["perf/samples_per_s"] for r in steady]
    tokens = [r["perf/tokens_per_s"] * d for r, d in zip(steady, durations)]
    return {
        "steps_logged": len(rows),
        "steady_steps": len(steady),
        "tokens_per_s": sum(tokens) / sum(durations) if durations else None,
        "step_s": statistics.mean(durations) if durations else None,
        "step_s_median": statistics.median(durations) if durations else None,
        "warmup_step_s": [round(GLOBAL_ROWS / r["perf/samples_per_s"], 2) for r in rows if r["step"] <= warmup],
        "rank0_peak_gb": max((r["mem/peak_gb"] for r in rows), default=None),
        "last_loss": rows[-1]["train/loss"] if rows else None,
    }


def _error_tail(log: Path, lines: int = 30) -> str:
    text = log.read_text(errors="replace").splitlines() if log.is_file() else []
    starts = [i for i, line in enumerate(text) if "Traceback" in line or "error:" in line]
    return "\n".join(text[starts[0] if starts else -lines :][-lines:])


def collect(name: str, res: dict, warmup: int) -> dict:
    out = WORK / name / "out" / "run"
    metrics, summary = out / "metrics.jsonl", out / "summary.json"
    if res["rc"] != 0 or not summary.is_file():
        return {**res, "rc": res["rc"] or 1, "error": _error_tail(Path(res["log"]))}
    s = json.loads(summary.read_text())
    return {
        **res,
        **steady_state(metrics, warmup),
        "summary_tokens_per_s": s["tokens_per_s"],
        "train_seconds": s["train_seconds"],
        "peak_memory_gb_per_worker": s["peak_memory_gb_per_worker"],
        "worker_nodes": len(set(s["worker_nodes"])),
    }


def run_job(name: str, cluster: Cluster, config: Path, warmup: int, steps: int) -> dict:
    work = WORK / name
    runtime_env = {
        "py_modules": [str(ROOT / "core" / "rayft_core")],  # rayft_core lives in core/, beside the working dir's rayft
        "excludes": [".git", ".venv", "outputs", "benchmarks/results", "__pycache__", "*.egg-info"],
        "env_vars": {**OFFLINE, **TRAIN_POLL, **EXTENSIONS},
    }
    entry = (
        "python -c 'import rayft, rayft_core; print(\"rayft from\", rayft.__file__, rayft_core.__file__)' && "
        f"rayft train {config}"
    )
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        cluster.dashboard,
        "--working-dir",
        str(ROOT),
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        "bash",
        "-c",
        entry,
    ]
    res = measure_run(
        cmd,
        work,
        work / "log.txt",
        cluster.auth_env(),
        work / "out" / "run" / "metrics.jsonl",
        warmup,
        steps,
        extra_sids=(cluster.proc.pid,),
    )
    text = Path(res["log"]).read_text(errors="replace")
    res["code_from"] = next(
        (line.split("rayft from ", 1)[1].strip() for line in text.splitlines() if "rayft from /" in line), None
    )  # the job's own print, not its echoed entrypoint
    res["accepted_s"] = next((float(line[1:9]) for line in text.splitlines() if "submitted successfully" in line), None)
    return res


# --- table --------------------------------------------------------------------------------------------------------


def _cell(value: float | None, fmt: str, ref: float | None = None) -> str:
    """A figure, with its ratio to `ref` in brackets when there is one."""
    if value is None:
        return "-"
    return fmt.format(value) + (f" ({value / ref:.2f}x)" if ref else "")


def _per_worker(values: list[float] | None, ref: list[float] | None = None) -> str:
    """Per-worker GiB, the ratio of the largest to ref's largest in brackets."""
    if not values:
        return "-"
    return "/".join(f"{x:.2f}" for x in values) + " GiB" + (f" ({max(values) / max(ref):.2f}x)" if ref else "")


def tables(results: dict[str, dict]) -> list[str]:
    ok = {n: r for n, r in results.items() if r["rc"] == 0}
    out: list[str] = []
    base, z2, z3, job = (ok.get(n) for n in ("w1-c2-z2", "w2-z2", "w2-z3", "job-w2-z2"))
    workers = [n for n in ("w1-c2-z2", "w1-c1-z2", "w2-z2") if n in ok]
    if workers:
        out += [
            f"**Workers** (ZeRO-2, global batch {GLOBAL_ROWS} rows x {SEQ} tokens; ratio: to 1 worker with 2 CPUs)",
            "",
            "| | micro x accum x workers | tokens/s (steady) | step time | peak RSS per worker (rayft) | "
            "others' cores | load at start |",
            "|---|---|---|---|---|---|---|",
        ]
        for n in workers:
            r, w = ok[n], RUNS[n][1]
            out.append(
                f"| {RUNS[n][0]} | {MICRO} x {GLOBAL_ROWS // (MICRO * w)} x {w} | "
                f"{_cell(r['tokens_per_s'], '{:.0f}', base and base['tokens_per_s'])} | "
                f"{_cell(r['step_s'], '{:.2f} s')} | {_per_worker(r['peak_memory_gb_per_worker'])} | "
                f"{r['contention']:.2f} | {r['load1_at_start']:.1f} |"
            )
        out.append("")
    if z2 or z3:
        out += [
            "**ZeRO-2 vs ZeRO-3** (2 workers; ratio: to ZeRO-2)",
            "",
            "| | step time | tokens/s (steady) | peak RSS per worker (rayft, max RSS) | "
            "RSS per worker, steady steps (sampled) | others' cores | load at start |",
            "|---|---|---|---|---|---|---|",
        ]
        for n, r in (("w2-z2", z2), ("w2-z3", z3)):
            if r:
                ref = z2 if n == "w2-z3" else {}
                out.append(
                    f"| {RUNS[n][0]} | {_cell(r['step_s'], '{:.2f} s', ref.get('step_s'))} | "
                    f"{_cell(r['tokens_per_s'], '{:.0f}', ref.get('tokens_per_s'))} | "
                    f"{_per_worker(r['peak_memory_gb_per_worker'], ref.get('peak_memory_gb_per_worker'))} | "
                    f"{_per_worker(r['steady_worker_rss_gib'], ref.get('steady_worker_rss_gib'))} | "
                    f"{r['contention']:.2f} | {r['load1_at_start']:.1f} |"
                )
        out += [
            "",
            "Peak RSS (rayft): each worker's max RSS over the whole run, from summary.json (rayft labels it GB; "
            "it is getrusage's KiB / 2^20, GiB). Steady RSS: each Ray Train worker process's RSS sampled here every "
            "0.5 s during the steady steps, the largest sample.",
            "",
        ]
    if z2 or job:
        out += [
            "**Start-up** (2 workers, ZeRO-2; ratio: to the local run)",
            "",
            "| | job accepted | to first step | to the end | tokens/s (steady) | cluster start (not included) | "
            "others' cores | load at start |",
            "|---|---|---|---|---|---|---|---|",
        ]
        if z2:
            out.append(
                f"| `rayft train` (embedded local cluster), from its start | - | {z2['first_step_s']:.1f} s | "
                f"{z2['wall_s']:.1f} s | {_cell(z2['tokens_per_s'], '{:.0f}')} | - | "
                f"{z2['contention']:.2f} | {z2['load1_at_start']:.1f} |"
            )
        if job:
            local = z2 or {}
            out.append(
                f"| `ray job submit` to a running cluster, from the submit | {_cell(job.get('accepted_s'), '{:.1f} s')} | "
                f"{_cell(job['first_step_s'], '{:.1f} s', local.get('first_step_s'))} | "
                f"{_cell(job['wall_s'], '{:.1f} s', local.get('wall_s'))} | {_cell(job['tokens_per_s'], '{:.0f}')} | "
                f"{job['cluster_start_s']:.1f} s | {job['contention']:.2f} | {job['load1_at_start']:.1f} |"
            )
        out.append("")
    for n, r in results.items():
        if r["rc"] != 0:
            out += [f"{n} FAILED (rc {r['rc']}), log {r['log']}:", "```", r.get("error", ""), "```", ""]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[2])
    ap.add_argument("--steps", type=int, default=14, help="optimizer steps per run (one metrics line each)")
    ap.add_argument("--warmup", type=int, default=4, help="first steps left out of the steady-state figures")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--skip", nargs="*", default=[], choices=list(RUNS), help="runs to leave out")
    add_idle_arguments(ap)
    ap.add_argument(
        "--retries",
        type=int,
        default=0,
        help=f"run a measurement again (after --wait-idle) up to this "
        f"many times while other processes used > {CONTENDED} cores on average during it",
    )
    ap.add_argument("--markdown", type=Path, help="also write the tables here (markdown)")
    args = ap.parse_args()
    if args.steps <= args.warmup:
        ap.error("--steps must exceed --warmup")
    if not (TOKENIZER / "tokenizer.json").is_file() or not (DATA_DIR / "alpaca_en_demo.json").is_file():
        print(f"skipped: needs the Qwen2.5 tokenizer at {TOKENIZER} and {DATA_DIR / 'alpaca_en_demo.json'}")
        return
    WORK.mkdir(parents=True, exist_ok=True)
    model = WORK / "model"
    fresh_dir(model)
    params = build_model(model, hidden_size=args.hidden, num_layers=args.layers)
    print(
        f"model: {params:,} parameters (hidden {args.hidden}, {args.layers} layers) at {model}; "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    names = [n for n in RUNS if n not in args.skip]
    # this checkout's rayft, whatever the venv's editable install says
    env = {"PYTHONPATH": f"{ROOT / 'core'}:{ROOT}", "PATH": f"{BIN}:{os.environ['PATH']}", **EXTENSIONS}
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder as B; B().load(verbose=False)",
        ],
        env={**os.environ, **env, "DS_ACCELERATOR": "cpu"},
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    print(f"DeepSpeed's shm_comm op ready in {EXT_DIR} ({time.perf_counter() - t0:.0f} s)", flush=True)
    # as many logical CPUs as the embedded cluster
    cluster = Cluster(WORK / "cluster", cpus=max(os.cpu_count() or 1, 4), env={**OFFLINE, **EXTENSIONS})

    def stop(*_: object) -> None:
        _end_running()
        cluster.stop()
        sys.exit(1)

    atexit.register(cluster.stop)
    signal.signal(signal.SIGTERM, stop)
    results: dict[str, dict] = {}
    try:
        for name in names:
            work = WORK / name
            fresh_dir(work)
            config = work / "run.yaml"
            config.write_text(yaml.safe_dump(run_config(name, model, args.steps)))
            job = RUNS[name][4] == "job"
            attempts = []
            for attempt in range(1 + args.retries):
                idle = wait_idle(args.wait_idle, args.idle_load)
                extra = {}
                if job:  # a fresh cluster per attempt: a second job would find the uploaded code cached
                    cluster.stop()
                    print("starting a Ray cluster (ray start --head, token authentication) ...", flush=True)
                    extra["cluster_start_s"] = cluster.start()
                    extra["unauthenticated_http_status"] = cluster.unauthenticated_status()
                    print(
                        f"cluster up in {extra['cluster_start_s']:.1f} s at {cluster.dashboard}; a request "
                        f"without the token gets HTTP {extra['unauthenticated_http_status']}",
                        flush=True,
                    )
                shutil.rmtree(
                    work / "out", ignore_errors=True
                )  # in fresh_dir(work): an earlier attempt's metrics would count
                print(f"running {name}: {RUNS[name][0]} (load {os.getloadavg()[0]:.2f}) ...", flush=True)
                if job:
                    res = run_job(name, cluster, config, args.warmup, args.steps)
                else:
                    res = measure_run(
                        [str(BIN / "rayft"), "train", str(config)],
                        work,
                        work / "log.txt",
                        env,
                        work / "out" / "run" / "metrics.jsonl",
                        args.warmup,
                        args.steps,
                    )
                if job:
                    cluster.stop()
                res = {**collect(name, res, args.warmup), **extra, "idle_wait": idle}
                print(json.dumps({k: v for k, v in res.items() if k != "error"}), flush=True)
                attempts.append(res)
                if res["rc"] != 0 or res["contention"] <= CONTENDED:
                    break
                print(
                    f"{name}: other processes used {res['contention']:.2f} cores on average during the run "
                    f"(> {CONTENDED}): contended" + (", running it again" if attempt < args.retries else ""),
                    flush=True,
                )
            best = min(attempts, key=lambda r: (r["rc"] != 0, r["contention"]))
            results[name] = {
                **best,
                "attempts": [{k: a.get(k) for k in ("rc", "wall_s", "contention", "load1_at_start")} for a in attempts],
            }
    finally:
        cluster.stop()
    lines = tables(results)
    head = (
        f"{params:,}-parameter Llama (hidden {args.hidden}, {args.layers} layers, Qwen2.5 tokenizer), full-parameter "
        f"SFT on alpaca_en_demo packed into {SEQ}-token rows, fp32, {args.steps} steps of {GLOBAL_ROWS} rows per run, "
        f"steady state = steps {args.warmup + 1}-{args.steps}; {os.cpu_count()} CPU cores."
    )
    print("\n" + head + "\n\n" + "\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "model_params": params,
        "hidden": args.hidden,
        "layers": args.layers,
        "steps": args.steps,
        "warmup": args.warmup,
        "seq": SEQ,
        "global_rows": GLOBAL_ROWS,
        "micro": MICRO,
        "machine_cpus": os.cpu_count(),
    }
    (RESULTS / "scaling.json").write_text(json.dumps({**meta, "results": results}, indent=2))
    md = head + "\n\n" + "\n".join(lines)
    (RESULTS / "scaling.md").write_text(md)
    if args.markdown:
        args.markdown.write_text(md)
    print(
        f"results: {RESULTS / 'scaling.json'}, {RESULTS / 'scaling.md'}"
        + (f", {args.markdown}" if args.markdown else "")
    )


if __name__ == "__main__":
    main()
