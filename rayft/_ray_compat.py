"""Every use of Ray's internals by rayft's Serve app (rayft/serve_app.py), in one place.

rayft builds on Ray's public `ray.serve.llm` (LLMServer, OpenAiIngress, make_fastapi_ingress). What that API
does not offer is taken here from Ray's internals, against the Ray that pyproject.toml pins (>=2.60,<2.61):

- OpenAiIngressCompat: Ray's OpenAI router, its model-id errors in OpenAI's shape, with a hook for rayft's
  own 404s (`unknown_model`);
- LLMServerCompat: Ray's vLLM server, its LoRA adapters loaded from where rayft puts them (hook
  `adapter_path`) and one load at a time per adapter;
- model_card(): Ray's /v1/models entry for a model; ingress_app(): Ray's FastAPI app for the router, which
  answers a body that is not JSON with 400.

RAY_INTERNALS lists every internal name, private method and private attribute used here with what rayft
expects of it, and check_ray_internals() compares the list with the installed Ray: tests/core/test_ray_compat.py
runs it, and serve_app.build_app logs what it finds. The internal modules are imported where they are used,
so that this module imports, and the check names every change, even when one of them has moved.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from ray import serve
from ray.serve.llm import LLMConfig
from ray.serve.llm.deployment import LLMServer
from ray.serve.llm.ingress import OpenAiIngress
from starlette.responses import JSONResponse

_INGRESS = "ray.serve.llm.ingress:OpenAiIngress"
_LLM_SERVER = "ray.serve.llm.deployment:LLMServer"
_OPENAI_MODELS = "ray.llm._internal.serve.core.configs.openai_api_models"


@dataclass(frozen=True)
class Internal:
    """One thing of Ray's that this module relies on, at `path` ("module:attribute.path"): its parameters
    (annotations left out), whether it is a coroutine function, and text its source must hold (a call of a
    method rayft overrides, an attribute rayft reads)."""

    path: str
    signature: str | None = None
    is_async: bool | None = None
    source_holds: tuple[str, ...] = ()

    def problems(self) -> list[str]:
        import ray

        def problem(what: str) -> str:
            return f"ray {ray.__version__}: {self.path} is gone or changed ({what}); update rayft/_ray_compat.py"

        module, _, attrs = self.path.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for attr in attrs.split("."):
                obj = getattr(obj, attr)
        except (ImportError, AttributeError) as e:
            return [problem(f"{type(e).__name__}: {e}")]
        found = []
        if self.signature is not None:
            try:
                sig = inspect.signature(obj)
                sig = sig.replace(
                    parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()],
                    return_annotation=sig.empty,
                )
            except (TypeError, ValueError) as e:
                sig = f"no signature: {e}"
            if str(sig) != self.signature:
                found.append(problem(f"parameters {sig}, expected {self.signature}"))
        if self.is_async is not None and inspect.iscoroutinefunction(obj) != self.is_async:
            found.append(problem("now a coroutine function" if self.is_async is False else "no longer async"))
        if self.source_holds:
            try:
                source = inspect.getsource(obj)
            except (OSError, TypeError) as e:
                source = ""
                found.append(problem(f"its source cannot be read: {e}"))
            found += [
                problem(f"its source no longer holds {text!r}")
                for text in self.source_holds
                if source and text not in source
            ]
        return found


RAY_INTERNALS: tuple[Internal, ...] = (
    # OpenAiIngressCompat._get_model_id: Ray's method, still called for every request's model
    Internal(f"{_INGRESS}._get_model_id", "(self, model)", is_async=True),
    Internal(f"{_INGRESS}._get_response", source_holds=("await self._get_model_id(body.model)",)),
    # LLMServerCompat: Ray's async constructor, which sets _llm_config and then calls _init_multiplex_loader
    Internal(f"{_LLM_SERVER}.__init__", "(self, llm_config, *, engine_cls=None, model_downloader=None)", is_async=True),
    Internal(
        f"{_LLM_SERVER}._init_shared",
        source_holds=("self._llm_config = llm_config", "self._init_multiplex_loader(model_downloader)"),
    ),
    # LLMServerCompat._init_multiplex_loader: sets _load_model, which Ray's resolver awaits
    Internal(f"{_LLM_SERVER}._init_multiplex_loader", "(self, model_downloader_cls=None)", is_async=False),
    # LLMServerCompat._maybe_resolve_lora_from_multiplex: Ray's method, still called before every request
    Internal(
        f"{_LLM_SERVER}._maybe_resolve_lora_from_multiplex",
        "(self)",
        is_async=True,
        source_holds=("await self._load_model(multiplexed_model_id)",),
    ),
    Internal(f"{_LLM_SERVER}._run_request", source_holds=("await self._maybe_resolve_lora_from_multiplex()",)),
    # the internal names imported below
    Internal(f"{_OPENAI_MODELS}:OpenAIHTTPException", "(status_code, message, type='Unknown', internal_message=None)"),
    Internal(f"{_OPENAI_MODELS}:to_model_metadata", "(model_id, model_config, overrides=None)"),
    Internal(
        "ray.llm._internal.serve.core.configs.llm_config:DiskMultiplexConfig",
        "(*, model_id, max_total_tokens, local_path, lora_assigned_int_id)",
    ),
    Internal("ray.llm._internal.common.models:global_id_manager.next", "()", is_async=False),
    Internal("ray.llm._internal.serve.core.ingress.ingress:init", "()", is_async=False),
)


def check_ray_internals() -> list[str]:
    """What no longer holds of RAY_INTERNALS in the installed Ray, one message each (empty: all holds)."""
    return [p for internal in RAY_INTERNALS for p in internal.problems()]


def model_card(model_id: str, llm_config: LLMConfig) -> Any:
    """Ray's /v1/models entry (a ModelCard) for a model, as OpenAiIngress takes it in model_cards: the public
    builders (build_openai_app) make it internally and offer no way to make one."""
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata

    return to_model_metadata(model_id, llm_config)


def ingress_app() -> Any:
    """Ray's FastAPI app for the router (OpenAI-shaped errors, CORS, request ids, HTTP metrics), which
    make_fastapi_ingress builds itself when given none: rayft needs the app to add its API-key middleware.

    Corrects: Ray's handler of a request that fails validation fails to serialise a body that is not JSON
    (the raw bytes) and answers 500; this app answers 400 with what is wrong."""
    from fastapi.exceptions import RequestValidationError
    from ray.llm._internal.serve.core.ingress.ingress import init

    app = init()

    async def invalid_request(request: Any, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse(
            {
                "error": {
                    "message": f"invalid request: {problems or 'malformed body'}",
                    "type": "BadRequestError",
                    "code": 400,
                }
            },
            status_code=400,
        )

    app.add_exception_handler(RequestValidationError, invalid_request)
    return app


class OpenAiIngressCompat(OpenAiIngress):
    """Ray's OpenAI router whose model-id errors are in OpenAI's error shape, and where a subclass can
    refuse a model id that Ray would route (`unknown_model`)."""

    async def unknown_model(self, model: str) -> str | None:
        """Why `model` (its base model served) names nothing served, answered with 404; None to serve it."""
        return None

    # Overrides OpenAiIngress._get_model_id, which resolves each request's `model` (called by _get_response).
    # Corrects: Ray raises fastapi's HTTPException for a missing or unknown model, which reaches the client as
    # {"detail": ...} while every other error is in OpenAI's {"error": {...}} shape: re-raised as Ray's
    # OpenAIHTTPException. Adds: Ray checks only the base of "<base>:<adapter>" and routes any adapter name to
    # the LoRA loader; rayft knows its adapters and answers an unknown one with 404 naming those served.
    async def _get_model_id(self, model: str | None) -> str:
        from ray.llm._internal.serve.core.configs.openai_api_models import OpenAIHTTPException

        try:
            model = await super()._get_model_id(model)
        except HTTPException as e:
            raise OpenAIHTTPException(
                e.status_code, str(e.detail), type="NotFoundError" if e.status_code == 404 else "BadRequestError"
            ) from None
        problem = await self.unknown_model(model)
        if problem:
            raise OpenAIHTTPException(404, problem, type="NotFoundError")
        return model


class LLMServerCompat(LLMServer):
    """Ray's vLLM server whose LoRA adapters are the directories a subclass names (`adapter_path`), each
    loaded once however many requests for it arrive together."""

    async def __init__(self, llm_config: LLMConfig):
        self._adapter_locks: dict[str, asyncio.Lock] = {}
        await super().__init__(llm_config)

    async def adapter_path(self, model_id: str) -> str:
        """The local directory of the adapter that `model_id` ("<base>:<adapter>") names. Abstract: the app's
        server (rayft.serve_app.RayftLLMServer) defines it; this class only loads what it names."""
        raise NotImplementedError("a subclass of LLMServerCompat names where its adapters are")

    # Overrides LLMServer._maybe_resolve_lora_from_multiplex, which loads a request's adapter into the engine
    # (called before every request). Corrects: Ray checks "already loaded?" and then awaits the load, so the
    # first concurrent requests for an adapter all load it and all but one fail with 500 ("has already been
    # loaded"): one at a time per adapter.
    async def _maybe_resolve_lora_from_multiplex(self) -> None:
        model_id = serve.get_multiplexed_model_id()
        async with self._adapter_locks.setdefault(model_id, asyncio.Lock()):
            await super()._maybe_resolve_lora_from_multiplex()

    # Overrides LLMServer._init_multiplex_loader, which sets the _load_model that the method above awaits
    # (called by Ray's constructor). Corrects: Ray's loader reads adapters only from the cloud bucket of
    # lora_config.dynamic_lora_loading_path; rayft's adapters are the local, shared or s3:// directories of the
    # serving config, so the loader asks adapter_path(). Serve's multiplexing (max adapters per replica) is kept.
    def _init_multiplex_loader(self, model_downloader_cls: Any = None) -> None:
        from ray.llm._internal.common.models import global_id_manager
        from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig

        async def load_adapter(model_id: str) -> DiskMultiplexConfig:
            local = await self.adapter_path(model_id)
            return DiskMultiplexConfig(
                model_id=model_id,
                max_total_tokens=None,
                local_path=local,
                lora_assigned_int_id=global_id_manager.next(),
            )

        mx = self._llm_config.multiplex_config()
        self._load_model = (
            serve.multiplexed(max_num_models_per_replica=mx.max_num_models_per_replica)(load_adapter)
            if mx
            else load_adapter
        )
