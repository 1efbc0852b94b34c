"""A real browser for tests/ui: Debian's Chromium driven by Playwright (its own browser download is not reachable
here). Without one the browser tests skip and say why, except on CI (CI=true), where that is a failure."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser():
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed (pip install playwright)"
    if missing is None and not Path(CHROMIUM).exists():
        missing = "no Chromium at /usr/bin/chromium (apt-get install chromium)"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the UI tests need a browser on CI: {missing}")
        pytest.skip(missing)
    with sync_playwright() as p:
        # no sandbox as root; /tmp instead of a container's small /dev/shm
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def ui_url(ray_cluster, workdir: Path):
    """`rayft ui`'s app on a free port, sending jobs to the session's Ray cluster, listing runs in workdir/ui-runs."""
    import uvicorn
    from ray._private.worker import get_dashboard_url

    from rayft.ui.app import create_app
    from rayft.ui.runs import Board

    board = Board("http://" + get_dashboard_url(), workdir / "ui-runs", command=f"{sys.executable} -m rayft.cli")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(board), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
