"""Run model-written Python with limits: the executor behind a tool-using rollout's `python` tool.

Each call runs the code in a fresh `python -I` subprocess, in a temporary directory of its own (its working
directory and HOME, deleted afterwards), with:

- resource limits (setrlimit): CPU seconds, address space, the size of any file it writes;
- a wall-clock timeout, after which the process is killed;
- an audit hook (PEP 578), installed before the code runs and impossible to remove from Python, that refuses
  sockets (no network, loopback included), writes, deletes and renames outside its directory, starting other
  processes, and loading native code through ctypes;
- its output cut to ``max_output`` characters.

Whatever the code does (an exception, a timeout, running out of memory, a refused operation) comes back as a
SandboxResult, whose ``observation`` is the text the model sees: the run never fails because of it.

This is a guard against accidents and careless code, not a security boundary: it lives in the same user and
kernel as the learner (no namespaces, no seccomp). Code from an untrusted source belongs in a container.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Runs first in the child: the audit hook, then the user's file. `root` is the sandbox directory.
_GUARD = r"""
import os, sys
root = os.path.realpath(sys.argv[1])
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATHS = {"os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.replace", "os.chmod", "os.chown", "os.symlink",
          "os.link", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
_NO = ("socket.", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.fork", "os.forkpty",
       "os.spawn", "os.startfile", "ctypes.", "pty.spawn")

def _inside(path):
    if isinstance(path, int):
        return True  # an open file descriptor: it was checked when opened
    real = os.path.realpath(os.fsdecode(path))
    return real == root or real.startswith(root + os.sep)

def _guard(event, args):
    if event.startswith(_NO):
        raise PermissionError(f"the sandbox does not allow {event}")
    if event == "open" and len(args) > 2 and args[0] is not None:
        mode, flags = args[1] or "", args[2] or 0
        writes = any(c in str(mode) for c in "wax+") or flags & _WRITE
        if writes and not _inside(args[0]):
            raise PermissionError(f"the sandbox writes only inside its directory, not {args[0]!r}")
    elif event in _PATHS:
        for path in args[:2]:
            if isinstance(path, (str, bytes, os.PathLike)) and not _inside(path):
                raise PermissionError(f"the sandbox changes files only inside its directory, not {path!r}")

sys.addaudithook(_guard)
del _guard
code = open(sys.argv[2], encoding="utf-8").read()
sys.argv = [sys.argv[2]]
exec(compile(code, "main.py", "exec"), {"__name__": "__main__"})
"""


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    exit_code: int | None  # None: killed at the timeout
    timed_out: bool
    truncated: bool

    @property
    def observation(self) -> str:
        """What the model is shown: the output, then the error or the timeout."""
        text = self.stdout
        if self.stderr:
            text += ("\n" if text else "") + self.stderr
        if self.timed_out:
            text += ("\n" if text else "") + "TimeoutError: the code ran past its time limit and was stopped"
        if self.truncated:
            text += "\n[output cut]"
        return text


def run_python(
    code: str, timeout: float = 10.0, memory_mb: int = 1024, max_output: int = 8192, max_file_mb: int = 16
) -> SandboxResult:
    """Run ``code`` in a fresh sandbox (see the module) and return what it printed and how it ended."""
    with tempfile.TemporaryDirectory(prefix="rayft-sandbox-") as tmp:
        root = Path(tmp)
        (root / "main.py").write_text(code, encoding="utf-8")

        def limits() -> None:  # in the child, before it execs Python
            cpu = max(1, int(timeout + 1))
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
            resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_mb * 2**20, max_file_mb * 2**20))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp, "PYTHONIOENCODING": "utf-8"}
        try:
            done = subprocess.run(
                [sys.executable, "-I", "-c", _GUARD, tmp, str(root / "main.py")],
                cwd=tmp,
                env=env,
                capture_output=True,
                timeout=timeout,
                preexec_fn=limits,
                stdin=subprocess.DEVNULL,
            )
            out, err, code_, timed_out = done.stdout, done.stderr, done.returncode, False
        except subprocess.TimeoutExpired as e:
            out, err, code_, timed_out = e.stdout or b"", e.stderr or b"", None, True
    stdout, stderr = out.decode(errors="replace"), _user_traceback(err.decode(errors="replace"))
    truncated = len(stdout) + len(stderr) > max_output
    return SandboxResult(stdout[:max_output], stderr[: max(0, max_output - len(stdout))], code_, timed_out, truncated)


def _user_traceback(stderr: str) -> str:
    """A traceback from the user's code, without the sandbox's own frames (its code has no source to show, so a
    frame is its "File" line and any indented lines under it)."""
    kept, in_guard = [], False
    for line in stderr.splitlines(keepends=True):
        if line.startswith('  File "<string>"'):
            in_guard = True
        elif not (in_guard and line.startswith("    ")):
            in_guard = False
            kept.append(line)
    return "".join(kept)
