"""`rayft serve`: OpenAI-compatible endpoints for rayft outputs on Ray Serve + vLLM.

    url = deploy(load("serve.yaml", None, []))     # on the connected cluster
    build_app(serve_config_dict)                    # the RayService import path: rayft.serve:build_app

The application itself is in rayft.serve_app (it imports vLLM); this module checks the input first.
The API key is read where the app is built and only its SHA-256 goes into the app (rayft.auth), so neither
Serve's config nor its logs hold the key.
"""

from __future__ import annotations

from typing import Any

from rayft.auth import api_key_sha256
from rayft_core.infer.vllm_engine import require_vllm
from rayft_core.serve_config import ServeConfig


def build_app(args: dict[str, Any]) -> Any:
    """The Serve application for a serving config (a mapping in ServeConfig's schema)."""
    from rayft import serve_app

    return serve_app.build_app(args)


def deploy(cfg: ServeConfig) -> str:
    """Start (or update) the app on the connected cluster and wait until it answers; returns the API's base URL."""
    from ray import serve

    serve.start(http_options={"host": cfg.http.host, "port": cfg.http.port})
    serve.run(build_app(cfg.model_dump(mode="json")), name=cfg.name, route_prefix=cfg.http.route_prefix)
    host = "127.0.0.1" if cfg.http.host in ("0.0.0.0", "::") else cfg.http.host
    return f"http://{host}:{cfg.http.port}{cfg.http.route_prefix.rstrip('/')}/v1"


# ----------------------------------------------------------------------------- `rayft serve`


def load(config_path: str | None, model_dir: str | None, overrides: list[str]) -> ServeConfig:
    """The serving config of `rayft serve`, with what can be checked here checked before anything starts."""
    from rayft_core.schema import ConfigError
    from rayft_core.serve_config import check_sources, config_for_output, load_serve_config

    cfg = (
        load_serve_config(config_path, overrides)
        if config_path
        else load_serve_config(data=config_for_output(model_dir), overrides=overrides)
    )
    problems = check_sources(cfg)
    if problems:
        raise ConfigError(problems, "serving config")
    return cfg


def serve_until_interrupted(
    config_path: str | None, model_dir: str | None, overrides: list[str], echo: Any = print
) -> None:
    import time

    from rayft.cluster import connect, is_local

    cfg = load(config_path, model_dir, overrides)
    remote = not is_local()
    if not remote:  # on a cluster the replicas' nodes need vLLM, not this machine
        require_vllm()
    api_key_sha256(cfg.auth)  # a missing key fails here, before the cluster starts
    connect()
    url = deploy(cfg)
    echo(f"serving on {url}")
    for m in cfg.models:
        echo(f"  model: {m.id}" + "".join(f"\n  model: {m.id}:{a}  (adapter)" for a in sorted(m.adapters)))
    key_hint = "$" + cfg.auth.api_key_env if not cfg.auth.api_key_file else f"$(cat {cfg.auth.api_key_file})"
    echo(
        f"try:  curl {url}/chat/completions -H 'Authorization: Bearer {key_hint}' -H 'Content-Type: application/json' "
        f'-d \'{{"model": "{cfg.models[0].id}", "messages": [{{"role": "user", "content": "Hello"}}]}}\''
    )
    echo("Ctrl-C stops" + ("" if remote else " (and the local Ray cluster)"))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.delete(cfg.name)
        echo("stopped")


# ----------------------------------------------------------------------------- `rayft serve --best-of`


def promote(app: str, adapter: str | None = None, sweep_dir: str | None = None, name: str | None = None) -> str:
    """Add a run's adapter (or a sweep's best trial's, read from its results.csv) to the running application
    ``app`` without restarting it; returns the model name clients send."""
    import csv
    import io

    from rayft import adapter_registry
    from rayft_core import storage
    from rayft_core.errors import UserInputError
    from rayft_core.serve_config import SERVED_NAME

    source = adapter
    if sweep_dir:
        text = storage.read_text(storage.join(sweep_dir, "results.csv"))
        rows = [r for r in csv.DictReader(io.StringIO(text or "")) if r.get("run_dir")]
        if not rows:
            raise UserInputError(
                f"--best-of {sweep_dir}: no results.csv with trials there (the sweep has not finished)"
            )
        source = rows[0]["run_dir"]  # best first
    name = name or (sweep_dir or source).rstrip("/").rsplit("/", 1)[-1] + ("-best" if sweep_dir else "")
    if not SERVED_NAME.match(name):
        raise UserInputError(f"--name {name}: letters, digits and . _ / - only, starting with a letter or digit")
    adapter_registry.connect_to_running()
    return adapter_registry.add_adapter(app, name, source)
