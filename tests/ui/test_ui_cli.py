"""`rayft ui` as a user starts it: the command joins the Ray cluster running on this machine (here the test
session's), serves the page and the API, and its runs table reads that cluster's jobs."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from ray._private.worker import get_dashboard_url

from rayft.ui.runs import Board


def test_rayft_ui_joins_the_local_cluster_and_serves(ray_cluster, tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "rayft.cli", "ui", "--port", str(port), "--storage", str(tmp_path)]
    ui = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, page = time.time() + 120, None
        while time.time() < deadline and ui.poll() is None:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert page is not None and page.status_code == 200, ui.stdout.read() if ui.poll() is not None else "no answer"
        assert "rayft" in page.text and "/static/app.js" in page.text
        # the jobs of this cluster (other tests' runs, when the whole suite runs), as the board of this process reads them
        listed = {r["output"] for r in httpx.get(f"http://127.0.0.1:{port}/api/runs", timeout=30).json()}
        assert listed == {r["output"] for r in Board("http://" + get_dashboard_url(), tmp_path).runs()}
        cluster = httpx.get(f"http://127.0.0.1:{port}/api/cluster", timeout=30).json()
        assert cluster["CPU"]["total"] == 4 and cluster["nodes"] == 1  # the session's cluster, not a new one
    finally:
        ui.terminate()
        output = ui.communicate(timeout=30)[0]
    assert f"rayft ui: http://127.0.0.1:{port}/" in output
