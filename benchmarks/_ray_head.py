"""A real Ray head node for `ray job submit` in a benchmark: `ray start --head --block` on free ports, in a
session of its own, with token authentication; stopped by its process group."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from _peer import fresh_dir

BIN = Path(sys.executable).parent  # the venv's ray command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _free_range(n: int = 100) -> int:
    """The first port of n consecutive free ones (Ray's worker ports)."""
    for base in range(21000, 60000, 997):
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free range of ports for Ray's workers")


class Cluster:
    """One head node (`ray start --head --block`) in a session of its own, token authentication on."""

    def __init__(self, root: Path, cpus: int, env: dict[str, str]):
        self.dir, self.cpus, self.extra_env = root, cpus, env
        self.token = secrets.token_hex(32)  # a fresh token: never the user's ~/.ray/auth_token
        self.proc: subprocess.Popen | None = None
        self.dashboard = self.start_s = None

    def auth_env(self) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def start(self) -> float:
        fresh_dir(self.dir)
        gcs, client, dash = _free_port(), _free_port(), _free_port()
        ports = {
            f"--{k}": _free_port()
            for k in (
                "node-manager-port",
                "object-manager-port",
                "metrics-export-port",
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "runtime-env-agent-port",
            )
        }
        first_worker = _free_range()
        self.dashboard = f"http://127.0.0.1:{dash}"
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "RAY_ADDRESS")},
            **self.extra_env,
            **self.auth_env(),
            "PATH": f"{BIN}:{os.environ['PATH']}",
        }
        cmd = [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--temp-dir={self.dir / 'ray'}",
            f"--port={gcs}",
            f"--ray-client-server-port={client}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--num-cpus={self.cpus}",
            f"--min-worker-port={first_worker}",
            f"--max-worker-port={first_worker + 99}",
            "--disable-usage-stats",
            *[f"{k}={v}" for k, v in ports.items()],
        ]
        t0 = time.perf_counter()
        self.log = open(self.dir / "head.log", "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        while time.perf_counter() - t0 < 180:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited ({self.proc.returncode}); see {self.dir / 'head.log'}")
            if self._get("/api/version", auth=True) == 200:
                self.start_s = time.perf_counter() - t0
                return self.start_s
            time.sleep(0.2)
        raise RuntimeError(f"the cluster's job API did not answer within 180 s; see {self.dir / 'head.log'}")

    def _get(self, path: str, auth: bool) -> int | None:
        req = urllib.request.Request(
            self.dashboard + path, headers={"Authorization": f"Bearer {self.token}"} if auth else {}
        )
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def unauthenticated_status(self) -> int | None:
        """What the job API answers a request without the token (401 when token authentication is on)."""
        return self._get("/api/jobs/", auth=False)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None and not _group_alive(self.proc.pid):
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 5)):  # its process group, and only it
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            t0 = time.time()
            while _group_alive(self.proc.pid) and time.time() - t0 < wait:
                time.sleep(0.5)
            if not _group_alive(self.proc.pid):
                break
        self.proc.poll()
        self.log.close()
        print(f"stopped the cluster in {self.dir}", flush=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
