"""What the side-by-side benchmarks share: LLaMA-Factory's own venv, and the process tree of a command."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import psutil

LF_VENV = Path("/tmp/lf-venv")


def ensure_lf_venv(work: Path) -> None:
    pip = [str(LF_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    if (LF_VENV / "bin" / "llamafactory-cli").exists():
        return
    subprocess.run(["python3", "-m", "venv", "--clear", str(LF_VENV)], check=True)
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["--no-deps", "llamafactory==0.9.5"], check=True)
    reqs = subprocess.run([str(LF_VENV / "bin" / "python"), "-c", "import importlib.metadata as m; "
                           "print('\\n'.join(r for r in m.requires('llamafactory') if ';' not in r))"],
                          check=True, capture_output=True, text=True).stdout.split()
    reqs = [r for r in reqs if not re.match(r"(torch|torchaudio|torchvision)\b(?![-_])", r)]
    work.mkdir(parents=True, exist_ok=True)
    cons = work / "lf-constraints.txt"
    cons.write_text("torch==2.13.0\n")
    subprocess.run(pip + ["-c", str(cons)] + reqs, check=True)
    site = next((LF_VENV / "lib").glob("python3*/site-packages"))
    (site / "torchaudio").mkdir(exist_ok=True)
    (site / "torchaudio" / "__init__.py").write_text('"""Stub: no CPU torchaudio for torch 2.13 (rayft benchmark)."""\n')


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
