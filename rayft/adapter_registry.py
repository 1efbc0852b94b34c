"""Adapters added to a running `rayft serve` application: `rayft serve --add-adapter`, `--best-of SWEEP_DIR`.

One small named actor per Serve application (detached: it outlives the process that added an adapter) holds the
served bases and the adapters added since the application started. The ingress and the engine replicas ask it only
for an adapter name their config does not list, so the requests for the configured ones never wait on it; nothing
restarts. An added adapter lasts as long as the cluster; add it to the serving config to keep it across restarts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ray

from rayft_core import storage
from rayft_core.errors import UserInputError

NAMESPACE = "rayft"


@ray.remote(num_cpus=0)
class AdapterRegistry:
    def __init__(self) -> None:
        self.bases: dict[str, dict[str, Any]] = {}  # served id -> {"path", "lora"}: what the application serves
        self.adapters: dict[str, dict[str, str]] = {}  # served id -> {adapter name: directory or URI}

    def serve(self, bases: dict[str, dict[str, Any]]) -> None:
        self.bases = bases

    def add(self, base: str, name: str, source: str) -> None:
        self.adapters.setdefault(base, {})[name] = source

    def state(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
        return self.bases, self.adapters


def registry(app: str, create: bool = True) -> Any:
    """The registry of Serve application ``app``; None where none exists and ``create`` is false."""
    name = f"adapters:{app}"
    if not create:
        try:
            return ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return None
    return AdapterRegistry.options(name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote()


async def added(app: str) -> dict[str, dict[str, str]]:
    """The adapters added to ``app`` since it started, by base id (empty where none were)."""
    handle = registry(app, create=False)
    return (await handle.state.remote())[1] if handle is not None else {}


def add_adapter(app: str, name: str, source: str) -> str:
    """Add the adapter at ``source`` (a rayft run directory or an adapter's) to the running application ``app`` as
    ``<base>:<name>``, on the served base it was trained on (which must serve LoRA); returns that model name."""
    handle = registry(app, create=False)
    bases = ray.get(handle.state.remote())[0] if handle is not None else {}
    if not bases:
        raise UserInputError(
            f"no rayft serve application {app!r} runs on this cluster: start it with `rayft serve`, and point "
            "RAY_ADDRESS at its cluster"
        )
    config = storage.read_text(storage.join(source, "adapter_config.json"))
    if config is None:
        raise UserInputError(
            f"{source} holds no adapter_config.json: not a LoRA adapter (serve a full model on its own)"
        )
    trained_on = json.loads(config).get("base_model_name_or_path") or ""
    matches = [b for b, info in bases.items() if _same_model(trained_on, info["path"])]
    if not matches:
        served = ", ".join(f"{b} ({info['path']})" for b, info in sorted(bases.items()))
        raise UserInputError(f"{source} was trained on {trained_on}, which {app!r} does not serve; it serves {served}")
    base = matches[0]
    if not bases[base]["lora"]:
        raise UserInputError(
            f"{base} runs without LoRA: set `lora: true` (or list an adapter) for it in the serving config and "
            "restart it"
        )
    ray.get(handle.add.remote(base, name, source))
    return f"{base}:{name}"


def connect_to_running() -> None:
    """Join the cluster a `rayft serve` runs on (RAY_ADDRESS, else this machine's), never starting one."""
    import os

    from rayft.cluster import check_reachable

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS", "auto")
    check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as e:
        raise UserInputError(
            f"no Ray cluster at {address}: set RAY_ADDRESS to the cluster that runs `rayft serve` ({e})"
        ) from None


def _same_model(a: str, b: str) -> bool:
    if storage.is_uri(a) or storage.is_uri(b):
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).resolve() == Path(b).resolve()
