"""`rayft ui`: the web app (configure, preview data, launch and watch runs, chat, export) on a Ray cluster."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import click

from rayft_core.errors import UserInputError


@click.command("ui")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; beyond this machine (e.g. 0.0.0.0) only with --auth or --token.",
)
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535))
@click.option("--auth", metavar="USER:PASSWORD", help="Ask every visitor for this user and password (HTTP basic auth).")
@click.option("--token", help="Or ask for this token: open http://HOST:PORT/?token=TOKEN once per browser.")
@click.option(
    "--storage",
    default="outputs",
    show_default=True,
    type=click.Path(file_okay=False),
    help="The folder whose runs the Runs tab lists (your runs' output.storage_path).",
)
@click.option(
    "--address",
    help="A running cluster's job server (http://HEAD:8265; its token is sent as `rayft "
    "submit` sends it). Default: the Ray cluster running on this machine, started if there is none.",
)
def ui_command(host: str, port: int, auth: str | None, token: str | None, storage: str, address: str | None) -> None:
    """Serve the rayft web app: configure a run from the schema's defaults (its YAML checked live), preview its
    data, launch it or a sweep as a Ray job on the cluster (it outlives the page and this process), watch and compare
    the runs' curves and logs, stop and resume them, train or serve a sweep's best, chat with a model, evaluate and
    export it. English, Chinese and Russian. More: docs/ui.md."""
    try:
        import uvicorn

        from rayft.ui.app import create_app
    except ImportError as e:
        raise UserInputError(f"rayft ui needs FastAPI and uvicorn ({e}): pip install 'rayft[ui]'") from None
    from rayft.ui.runs import Board

    if not _loopback(host) and not (auth or token):
        raise UserInputError(f"--host {host} lets other machines in: give --auth USER:PASSWORD or --token TOKEN")
    if auth is not None and ":" not in auth:
        raise UserInputError("--auth: expected USER:PASSWORD")
    if address:
        board = Board(address, Path(storage).absolute(), remote=True)
    else:
        board = Board(_local_cluster(), Path(storage).absolute(), command=f"{sys.executable} -m rayft.cli")
    click.echo(f"rayft ui: http://{host}:{port}/ (jobs go to {board.address}; Ctrl-C stops the page, not the runs)")
    uvicorn.run(create_app(board, basic=auth, token=token), host=host, port=port, log_level="warning")


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _local_cluster() -> str:
    """Join the Ray cluster running on this machine, or start one with `ray start --head` (so that runs outlive
    this process; `ray stop` ends it); its job server's URL."""
    import ray
    from ray._private.worker import get_dashboard_url

    from rayft.cluster import LOCAL_ONLY_ENV

    os.environ.pop("RAY_ADDRESS", None)
    try:
        ray.init(address="auto", log_to_driver=False)
    except ConnectionError:
        env = {**os.environ, **dict(LOCAL_ONLY_ENV)}
        cpus = max(os.cpu_count() or 1, 4)  # as rayft's embedded cluster declares (rayft.cluster.connect)
        ray_bin = Path(sys.executable).with_name("ray")
        command = [str(ray_bin), "start", "--head", f"--num-cpus={cpus}", "--dashboard-host=127.0.0.1"]
        click.echo(f"starting a local Ray cluster: {' '.join(command[1:])} (`ray stop` ends it)")
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        ray.init(address="auto", log_to_driver=False)
    return "http://" + get_dashboard_url()
