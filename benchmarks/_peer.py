"""What the side-by-side benchmarks share: LLaMA-Factory's and TRL's own venvs, the process tree of a command,
and (measure, wait_idle) running a command to exit with its wall time, memory and CPU while the machine is quiet."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import psutil

LF_VENV = Path("/tmp/lf-venv")
TRL_VENV = Path("/tmp/trl-venv")
TOKENIZER = Path("/work/shared/fixtures/tokenizers/qwen2.5-instruct")  # the model benchmarks' tokenizer
TRL_VERSION = "1.16.*"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def ensure_lf_venv(work: Path) -> None:
    pip = [str(LF_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    if (LF_VENV / "bin" / "llamafactory-cli").exists():
        return
    subprocess.run(["python3", "-m", "venv", "--clear", str(LF_VENV)], check=True)
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["--no-deps", "llamafactory==0.9.5"], check=True)
    reqs = subprocess.run(
        [
            str(LF_VENV / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print('\\n'.join(r for r in m.requires('llamafactory') if ';' not in r))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    reqs = [r for r in reqs if not re.match(r"(torch|torchaudio|torchvision)\b(?![-_])", r)]
    work.mkdir(parents=True, exist_ok=True)
    cons = work / "lf-constraints.txt"
    cons.write_text("torch==2.13.0\n")
    subprocess.run(pip + ["-c", str(cons)] + reqs, check=True)
    site = next((LF_VENV / "lib").glob("python3*/site-packages"))
    (site / "torchaudio").mkdir(exist_ok=True)
    (site / "torchaudio" / "__init__.py").write_text(
        '"""Stub: no CPU torchaudio for torch 2.13 (rayft benchmark)."""\n'
    )


def ensure_trl_venv(work: Path) -> None:
    """TRL (and PEFT) in a venv of their own, never in rayft's: the CPU torch 2.13.0 wheel first (that exact pin
    takes the local CPU build; a looser one downloads a CUDA torch), then trl and peft constrained to it."""
    python = TRL_VENV / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import trl, peft"], capture_output=True).returncode == 0:
        return
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(["python3", "-m", "venv", "--clear", str(TRL_VENV)], check=True)
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    work.mkdir(parents=True, exist_ok=True)
    cons = work / "trl-constraints.txt"
    cons.write_text("torch==2.13.0\n")
    subprocess.run(pip + ["-c", str(cons), f"trl=={TRL_VERSION}", "peft"], check=True)


def session_id(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def process_tree(root: psutil.Process, sid: int) -> list[psutil.Process]:
    """The command's process, its descendants, and every process of its session (reparented ones too)."""
    procs = {p.pid: p for p in psutil.process_iter() if session_id(p.pid) == sid}
    try:
        procs.update({p.pid: p for p in [root] + root.children(recursive=True)})
    except psutil.Error:
        pass
    return list(procs.values())


def busy_cpu_s() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def wait_idle(max_s: float | None, load: float) -> dict:
    """Other sessions share this machine: wait (at most max_s; None: not at all) for the 1-min load average to
    fall below `load`."""
    if max_s is None:
        return {"waited_s": 0.0, "load1": os.getloadavg()[0]}
    t0 = time.time()
    if os.getloadavg()[0] >= load:
        print(
            f"waiting for the 1-min load average ({os.getloadavg()[0]:.2f}) to fall below {load} "
            f"(at most {max_s:.0f} s) ...",
            flush=True,
        )
    while os.getloadavg()[0] >= load and time.time() - t0 < max_s:
        time.sleep(5)
    waited, now = time.time() - t0, os.getloadavg()[0]
    if waited > 1:
        print(
            f"waited {waited:.0f} s; load average now {now:.2f}"
            + ("" if now < load else f" (still >= {load}: gave up waiting, figures may be contended)"),
            flush=True,
        )
    return {"waited_s": waited, "load1": now}


def add_idle_arguments(ap: argparse.ArgumentParser, each: str = "run") -> None:
    """--wait-idle [MAX_S] and --idle-load: the arguments of wait_idle."""
    ap.add_argument(
        "--wait-idle",
        type=float,
        nargs="?",
        const=1800.0,
        default=None,
        metavar="MAX_S",
        help=f"before each {each}, wait (at most MAX_S, default 1800) for the 1-min load average to fall "
        "below --idle-load (the machine is shared)",
    )
    ap.add_argument("--idle-load", type=float, default=0.5)


SCRATCH_MARK = ".rayft-benchmark"  # in every directory a benchmark makes for its own files


def fresh_dir(path: Path) -> Path:
    """An empty directory at ``path`` for a benchmark's own files. What is already there is deleted only when a
    benchmark made it (its marker file) or it is empty; a directory holding anything else is refused."""
    if path.exists():
        if not (path / SCRATCH_MARK).is_file() and any(path.iterdir()):
            raise SystemExit(f"{path} holds files no benchmark wrote; move them, or change the path in the script")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / SCRATCH_MARK).write_text("made by a rayft benchmark: its next run deletes this directory\n")
    return path


def spawn(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """cmd in a session of its own (so all it starts can be found and ended), stdout and stderr as one text
    stream (text mode: tqdm's \\r ends a line too)."""
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )


def offline_env(env: dict[str, str]) -> dict[str, str]:
    """This process's environment for a measured command: offline, unbuffered, no venv or cluster of ours leaking in."""
    return {
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "RAY_ADDRESS")},
        **OFFLINE,
        "PYTHONUNBUFFERED": "1",
        **env,
    }


def log_output(proc: subprocess.Popen, log: Path, t0: float) -> threading.Thread:
    """A thread writing every non-empty output line of proc to `log` with its time since t0 ("[  12.34s] ...")."""

    def read() -> None:
        with open(log, "w", buffering=1) as f:  # line-buffered: the log shows progress while it runs
            for line in proc.stdout:
                if line.strip():
                    f.write(f"[{time.perf_counter() - t0:8.2f}s] {line.rstrip()}\n")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def sample_tree(procs: list[psutil.Process], cpu: dict[tuple[int, float], float], full: bool) -> tuple[int, int]:
    """Summed RSS and (when `full`: smaps_rollup costs CPU) PSS of procs; their CPU seconds recorded into cpu."""
    rss = pss = 0
    for p in procs:
        try:
            with p.oneshot():
                m, c = p.memory_full_info() if full else p.memory_info(), p.cpu_times()
                cpu[(p.pid, p.create_time())] = c.user + c.system
            rss, pss = rss + m.rss, pss + (m.pss if full else 0)
        except psutil.Error:
            pass
    return rss, pss


def terminate_leftovers(session: int) -> int:
    """Terminate the processes a measured command started in its session and left behind; return how many."""
    leftovers = [p for p in psutil.process_iter() if session_id(p.pid) == session]
    for p in leftovers:
        try:
            p.terminate()
        except psutil.Error:
            pass
    return len(leftovers)


def lf_trainer_results(out: Path) -> tuple[dict, dict, list[dict], int]:
    """A finished LLaMA-Factory (HF Trainer) run's all_results.json, trainer_state.json, its loss logs and the
    non-padding input tokens it saw."""
    results = json.loads((out / "all_results.json").read_text())
    state = json.loads((out / "trainer_state.json").read_text())
    logs = [h for h in state["log_history"] if "loss" in h]
    tokens = state.get("num_input_tokens_seen") or max(h.get("num_input_tokens_seen", 0) for h in state["log_history"])
    return results, state, logs, tokens


def measure(cmd: list[str], cwd: Path, log: Path, env: dict[str, str]) -> dict:
    """Run cmd to exit, offline, in a session of its own: wall time; peak of the summed RSS (every 0.5 s) and PSS
    (every 2 s) over its process, its descendants and every process of its session (Ray's GCS/raylet/workers
    count even if reparented); CPU seconds of that tree and of all other processes meanwhile. Every output line
    goes to `log` with its time since start ("[  12.34s] ...")."""
    env = offline_env(env)
    peak_rss = peak_pss = 0
    cpu: dict[tuple[int, float], float] = {}  # (pid, start time) -> last seen user + sys seconds
    load0, busy0, t0 = os.getloadavg()[0], busy_cpu_s(), time.perf_counter()
    proc = spawn(cmd, cwd, env)
    reader = log_output(proc, log, t0)
    root = psutil.Process(proc.pid)
    polls = 0
    while proc.poll() is None:
        rss, pss = sample_tree(process_tree(root, proc.pid), cpu, full=polls % 4 == 0)  # PSS every 2 s only
        peak_rss, peak_pss, polls = max(peak_rss, rss), max(peak_pss, pss), polls + 1
        time.sleep(0.5)
    wall, busy = time.perf_counter() - t0, busy_cpu_s() - busy0
    reader.join(timeout=10)
    leftovers = terminate_leftovers(proc.pid)
    return {
        "rc": proc.returncode,
        "wall_s": wall,
        "peak_rss_gb": peak_rss / 1e9,
        "peak_pss_gb": peak_pss / 1e9,
        "cpu_s": sum(cpu.values()),
        "other_cpu_s": busy - sum(cpu.values()),
        "load1_at_start": load0,
        "leftover_processes": leftovers,
        "log": str(log),
    }


def build_model(out: Path, hidden_size: int = 64, num_layers: int = 2) -> int:
    """Random-init tiny Llama + the Qwen2.5 tokenizer files copied verbatim; returns the parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rayft_core.model.families import tiny_config

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(0)
    config = tiny_config(
        "llama",
        len(tok),
        hidden_size=hidden_size,
        num_layers=num_layers,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, out / name)
    return sum(p.numel() for p in model.parameters())
