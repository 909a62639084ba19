"""The FastAPI app: POST /v1/score, GET /v1/functions, GET /health, GET /metrics, OpenAPI docs at /docs.

The same app runs under uvicorn (``python -m services.reward``) and as Ray Serve replicas; only the metrics
recorder differs. Each app owns one warm verifier pool, started and stopped with the app's lifespan.
"""

import time
from contextlib import asynccontextmanager
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ExceptionHandler

from cfpo.asgi_guards import BodyLimit, LoopbackHosts, is_loopback
from cfpo.metrics import REWARD_REQUEST_SECONDS, REWARD_REQUESTS, Recorder
from services.reward.functions import REGISTRY
from services.reward.pool import VerifierPool
from services.reward.schemas import ScoreResponse, score_request_model
from services.reward.scoring import score_items
from services.reward.settings import RewardSettings

SCORE_PATH = "/v1/score"
FUNCTIONS_PATH = "/v1/functions"


async def _unprocessable(request: Request, error: RequestValidationError) -> JSONResponse:
    """422 with each problem's field path spelled out, and without echoing the (possibly huge) input back."""
    problems = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()]
    message = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in problems)
    return JSONResponse({"detail": problems, "message": message}, status_code=422)


def _description(settings: RewardSettings) -> str:
    tasks = "\n".join(f"- `{name}`: {weights}" for name, weights in settings.tasks.items())
    functions = "\n".join(f"- `{f.name}`: {f.description}" for f in REGISTRY.values())
    return f"Scores completions against references.\n\nTasks:\n{tasks}\n\nReward functions:\n{functions}"


def create_app(settings: RewardSettings, recorder: Recorder) -> FastAPI:
    # No postponed annotations in this module: FastAPI must see the request model built here as a class.
    score_request: Any = score_request_model(settings)  # Any to mypy, which cannot check a class made at run time

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.pool = VerifierPool(settings.pool_size, settings.item_timeout, settings.plugins)
        try:
            await app.state.pool.warm()
            yield
        finally:
            app.state.pool.close()

    app = FastAPI(title="CFPO reward service", description=_description(settings), lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=int(settings.max_body_mb * 2**20), setting="max_body_mb")
    if is_loopback(settings.host):  # no token: on loopback, refuse names rebound to it
        app.add_middleware(LoopbackHosts)
    # Starlette types handlers on Exception; it calls this one with the RequestValidationError it is registered for.
    app.add_exception_handler(RequestValidationError, cast(ExceptionHandler, _unprocessable))

    @app.middleware("http")
    async def measure(request: Request, call_next):
        if request.url.path != SCORE_PATH:
            return await call_next(request)
        start, status = time.perf_counter(), "500"
        try:
            response = await call_next(request)
            status = str(response.status_code)
            return response
        finally:
            recorder.observe(REWARD_REQUEST_SECONDS, time.perf_counter() - start)
            recorder.inc(REWARD_REQUESTS, status=status)

    @app.post(
        SCORE_PATH,
        response_model=ScoreResponse,
        responses={
            400: {"description": "body is not JSON text"},
            411: {"description": "chunked body without Content-Length"},
            413: {"description": "body over max_body_mb"},
        },
    )
    async def score(body: score_request, request: Request) -> ScoreResponse:
        """Score each item with its task's weighted reward functions (or the override given)."""
        return ScoreResponse(rewards=await score_items(body, settings.tasks, request.app.state.pool, recorder))

    @app.get(FUNCTIONS_PATH)
    async def functions() -> dict[str, dict[str, str]]:
        """The reward functions a run spec's ``rollout.rewards`` may name (plugins included), with descriptions:
        the control API checks a spec against them at submit."""
        return {"functions": {f.name: f.description for f in REGISTRY.values()}}

    @app.get("/health", responses={503: {"description": "verifier pool is down"}})
    async def health(request: Request) -> JSONResponse:
        """200 while the verifier pool runs, 503 once it has broken."""
        if request.app.state.pool.alive:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "verifier pool is down"}, status_code=503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus text: requests, latency, items, and reward-function calls by outcome."""
        return Response(await recorder.exposition(), media_type=recorder.content_type)

    return app
