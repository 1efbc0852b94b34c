"""The web app of `rayft ui`: a JSON API over rayft's own functions, and one static page that drives it.

    app = create_app(Board(address="http://127.0.0.1:8265", storage=Path("outputs")))

Why not Gradio (LlamaBoard's choice): the page needs forms, tables, a plot and a streamed chat, which a few hundred
lines of plain JavaScript draw; the API under it is what the tests and scripts call; and FastAPI and uvicorn come
with Ray Serve already, where Gradio would add its own pins of them (and of huggingface-hub) beside vLLM's.
"""

from __future__ import annotations

import base64
import hmac
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from rayft.ui import forms, runs, views
from rayft.ui.runs import Board
from rayft_core.errors import UserInputError
from rayft_core.schema import ConfigError

HERE = Path(__file__).parent
LOCALES = HERE / "locales"
TOKEN_COOKIE = "rayft_ui_token"


def languages() -> dict[str, str]:
    """Each locale file's code and the language's own name (its "language" key)."""
    return {p.stem: json.loads(p.read_text(encoding="utf-8"))["language"] for p in sorted(LOCALES.glob("*.json"))}


def create_app(board: Board, basic: str | None = None, token: str | None = None) -> FastAPI:
    """The app; with BASIC ("user:password") or TOKEN set, every request must carry one of them."""
    app = FastAPI(title="rayft ui", docs_url=None, redoc_url=None)
    app.state.board, app.state.engines = board, views.Engines()
    if basic or token:
        _require_auth(app, basic, token)
    app.add_exception_handler(UserInputError, _bad_input)
    app.include_router(api)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    return app


async def _bad_input(request: Request, e: Exception) -> JSONResponse:
    """Bad input is a 400 whose problems (a config's, or the checks' "  - ..." lines) the page puts by their fields."""
    lines = (
        e.problems if isinstance(e, ConfigError) else [ln[4:] for ln in str(e).splitlines() if ln.startswith("  - ")]
    )
    return JSONResponse({"error": str(e), "problems": [forms.split_problem(p) for p in lines]}, status_code=400)


api = APIRouter()


def _need(body: dict[str, Any], key: str) -> Any:
    """A request's field; a missing or empty one is a 400 naming it."""
    if body.get(key) in (None, "", []):
        raise UserInputError(f"{key}: required (give it in the form)")
    return body[key]


def _board(request: Request) -> Board:
    return request.app.state.board


@api.get("/")
def index() -> FileResponse:
    return FileResponse(HERE / "static" / "index.html")


@api.get("/api/languages")
def _languages() -> dict[str, str]:
    return languages()


@api.get("/api/locale/{code}")
def locale(code: str) -> Response:
    if code not in languages():
        raise UserInputError(f"no locale {code!r}; there are {', '.join(languages())}")
    return Response((LOCALES / f"{code}.json").read_text(encoding="utf-8"), media_type="application/json")


@api.get("/api/fields")
def fields() -> dict[str, Any]:
    return forms.describe_fields()


@api.post("/api/check")
def check(body: dict[str, Any]) -> dict[str, Any]:
    return forms.check(config=body.get("config"), text=body.get("yaml"))


@api.post("/api/validate")
def validate(body: dict[str, Any]) -> dict[str, Any]:
    return forms.full_check(body.get("config") or {})


@api.get("/api/datasets")
def datasets(dir: str) -> list[str]:
    return forms.dataset_names(dir)


@api.post("/api/import-llamafactory")
def import_llamafactory(body: dict[str, Any]) -> dict[str, Any]:
    return forms.import_llamafactory(body.get("yaml", ""))


@api.get("/api/model")
def model(path: str) -> dict[str, Any]:
    return forms.model_facts(path)


@api.post("/api/preview")
def preview(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    return views.preview(body.get("config") or {}, int(body.get("examples", 3)), _board(request).remote)


@api.get("/api/cluster")
def cluster(request: Request) -> dict[str, Any]:
    return views.cluster(_board(request).remote)


@api.get("/api/runs")
def run_table(request: Request) -> list[dict[str, Any]]:
    return _board(request).runs()


@api.get("/api/metrics")
def metrics(output: str) -> list[dict[str, Any]]:
    return runs.metrics(output)


@api.get("/api/logs")
def logs(request: Request, job_id: str) -> Response:
    return Response(_board(request).logs(job_id), media_type="text/plain")


@api.post("/api/launch")
def launch(request: Request, body: dict[str, Any]) -> dict[str, str]:
    return _board(request).launch(body.get("config") or {})


@api.post("/api/stop")
def stop(request: Request, body: dict[str, Any]) -> dict[str, bool]:
    return {"stopped": _board(request).stop(_need(body, "job_id"))}


@api.post("/api/resume")
def resume(request: Request, body: dict[str, Any]) -> dict[str, str]:
    return _board(request).resume(_need(body, "output"))


@api.post("/api/serve")
def serve(request: Request, body: dict[str, Any]) -> dict[str, str]:
    return _board(request).serve(_need(body, "model"))


@api.get("/api/sweep")
def sweep(output: str) -> dict[str, Any]:
    from rayft.ui.sweeps import sweep_view  # imports Ray Tune: only when a sweep is looked at

    return sweep_view(output)


@api.post("/api/chat")
def chat(request: Request, body: dict[str, Any]) -> StreamingResponse:
    engines, model_dir = request.app.state.engines, body.get("model") or ""
    engines.load(model_dir)  # a bad folder is a 400 now, not a broken stream later
    params = {k: body[k] for k in ("max_new_tokens", "temperature", "top_p") if k in body}
    return StreamingResponse(engines.stream(model_dir, _need(body, "messages"), params), media_type="text/plain")


@api.post("/api/eval/mc")
def eval_mc(body: dict[str, Any]) -> dict[str, Any]:
    n_shot, lang, split = int(body.get("n_shot", 0)), body.get("lang", "en"), body.get("split", "test")
    return views.eval_mc(_need(body, "model"), _need(body, "task_dir"), n_shot, lang, split)


@api.post("/api/eval/similarity")
def eval_similarity(body: dict[str, Any]) -> dict[str, Any]:
    return views.eval_similarity(_need(body, "predictions"))


@api.post("/api/export")
def export(body: dict[str, Any]) -> dict[str, str]:
    dtype, shard = body.get("dtype"), body.get("max_shard_size") or "5GB"
    return {
        "output": views.export(_need(body, "run_dir"), _need(body, "output"), dtype, shard, bool(body.get("ollama")))
    }


def _require_auth(app: FastAPI, basic: str | None, token: str | None) -> None:
    """Every request needs the password (HTTP basic auth) or the token: as a bearer header, as ?token= once (the
    browser then keeps it in a cookie), or that cookie."""
    expected_basic = "Basic " + base64.b64encode(basic.encode()).decode() if basic else None

    def same(given: str | None, expected: str | None) -> bool:
        return bool(given and expected) and hmac.compare_digest(given.encode(), expected.encode())

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Response:
        header = request.headers.get("authorization")
        query = request.query_params.get("token")
        if (
            same(header, expected_basic)
            or same(header, f"Bearer {token}" if token else None)
            or same(request.cookies.get(TOKEN_COOKIE), token)
        ):
            return await call_next(request)
        if same(query, token):
            response = await call_next(request)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response
        headers = {"WWW-Authenticate": 'Basic realm="rayft ui"'} if basic else {}
        return JSONResponse({"error": "not signed in: give the token or the password"}, 401, headers=headers)
