"""The FastAPI app: /v1/runs (submit, list, show, cancel, metrics history), /health, /metrics, docs at /docs.

Route handlers are plain functions (FastAPI runs them in its thread pool) because the registry and the model
lookup are blocking clients shared with the workers. /health, /metrics and the docs answer without the token:
probes and scrapers carry none, and the schema is no secret.
"""

import asyncio
import contextlib
import logging
from typing import Annotated

import redis
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import ValidationError

from cfpo.asgi_guards import BodyLimit, LoopbackHosts
from cfpo.clients.reward import RewardClient
from cfpo.metrics import (
    CONTROL_REQUESTS,
    CONTROL_RUNS_QUEUED,
    CONTROL_RUNS_RUNNING,
    CONTROL_RUNS_SUBMITTED,
    PrometheusRecorder,
)
from cfpo.registry import RunRecord, RunRegistry
from cfpo.run_spec import RunSpec
from services.control import errors
from services.control.auth import token_checker
from services.control.budget import OverBudget, check_budget
from services.control.reaper import reap_forever
from services.control.schemas import CancelRequest, HistoryQuery, ListQuery, RunList, StepHistory, SubmitRequest
from services.control.served_models import ServedModels, check_served
from services.control.settings import ControlSettings
from services.control.spec_checks import SpecProblem, check_reward_names, check_task_files, task_size_problems

log = logging.getLogger("cfpo.control")

DESCRIPTION = """Submit, list, watch and cancel training runs. Runs are kept in Redis, where learner and rollout
workers claim them (states: queued -> running -> succeeded | failed | cancelled, each end with a reason).

With `CFPO_API_TOKEN` set on the server, every route but `/health`, `/metrics` and these docs needs
`Authorization: Bearer <token>` (use *Authorize* above).

{model_check}"""


def _model_check_text(settings: ControlSettings) -> str:
    if settings.generation_url is None:
        return (
            "No generation URL is configured: a run's `model` is **not** checked against the served model "
            "(start with `--generation-url` to check it)."
        )
    return (
        f"A run whose `model` is not the model generation at {settings.generation_url} serves "
        "(its `GET /v1/models`) is refused with 409."
    )


RESPONSES = {
    400: "the body is not JSON text (e.g. not UTF-8)",
    401: "no token, or the wrong one",
    404: "no such run",
    409: "a submit: generation serves another model; a cancel: the run already ended",
    503: "Redis (or, for a submit, generation) is unreachable",
}


def _responses(*codes: int) -> dict:
    return {code: {"description": RESPONSES[code]} for code in codes}


def create_app(
    settings: ControlSettings, registry: RunRegistry, recorder: PrometheusRecorder, served_models: ServedModels | None
) -> FastAPI:
    """``served_models``: how to ask generation what it serves; None skips the model check."""
    rewards = RewardClient(settings.reward_url, timeout=settings.lookup_timeout_s) if settings.reward_url else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("auth: %s", "bearer token required" if settings.token else "OFF (no CFPO_API_TOKEN; loopback only)")
        log.info("model check: %s", _model_check_text(settings))
        reaper = asyncio.create_task(reap_forever(registry, settings, recorder))
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            registry.close()
            if rewards is not None:
                rewards.close()

    app = FastAPI(
        title="CFPO control API",
        description=DESCRIPTION.format(model_check=_model_check_text(settings)),
        lifespan=lifespan,
    )
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, setting="max_body_bytes")
    if settings.token is None:  # then it listens on loopback only (the settings' rule): refuse rebound names
        app.add_middleware(LoopbackHosts)

    @app.middleware("http")
    async def count(request: Request, call_next):
        answered = "500"
        try:
            response = await call_next(request)
            answered = str(response.status_code)
            return response
        finally:
            route = request.scope.get("route")
            recorder.inc(
                CONTROL_REQUESTS, method=request.method, route=getattr(route, "path", "unmatched"), status=answered
            )

    runs = APIRouter(
        prefix="/v1/runs",
        tags=["runs"],
        dependencies=[Depends(token_checker(settings.token))],
        responses=_responses(401, 503),
    )

    @runs.post("", status_code=status.HTTP_201_CREATED, response_model=RunRecord, responses=_responses(400, 409))
    def submit(body: SubmitRequest, response: Response) -> RunRecord:
        """Validate a run spec and queue the run; 409 if generation serves another model."""
        spec = _storable(body)
        _within_budget(spec, registry, settings.redis_budget_mib)
        _usable(spec, settings, rewards)
        if served_models is not None:
            check_served(spec.model, served_models())
        record = registry.submit(spec, name=body.name)
        recorder.inc(CONTROL_RUNS_SUBMITTED)
        response.headers["Location"] = f"/v1/runs/{record.id}"
        return record

    @runs.get("", response_model=RunList)
    def list_runs(query: Annotated[ListQuery, Query()]) -> RunList:
        """The newest runs first, optionally only those in one state."""
        return RunList(runs=registry.list_runs(query.state, query.limit))

    @runs.get("/{run_id}", response_model=RunRecord, responses=_responses(404))
    def show(run_id: str) -> RunRecord:
        """State (with its reason), steps done of steps, policy version, latest metrics and staleness."""
        return registry.get(run_id)

    @runs.post("/{run_id}/cancel", response_model=RunRecord, responses=_responses(400, 404, 409))
    def cancel(run_id: str, body: CancelRequest | None = None) -> RunRecord:
        """A queued run is cancelled at once; a running one is asked to stop (``cancel_reason`` set) and ends as
        cancelled when its worker reaches a step boundary. 409 for a run that already succeeded or failed."""
        return registry.cancel(run_id, (body or CancelRequest()).reason)

    @runs.get("/{run_id}/metrics", response_model=StepHistory, responses=_responses(404))
    def metrics_history(run_id: str, query: Annotated[HistoryQuery, Query()]) -> StepHistory:
        """The per-step metrics the learner recorded, oldest first."""
        return StepHistory(run_id=run_id, steps=registry.history(run_id, query.since, query.limit))

    app.include_router(runs)

    @app.get("/health", responses={503: {"description": "Redis is unreachable"}})
    def health() -> JSONResponse:
        """200 while the run registry (Redis) answers."""
        try:
            registry.ping()
        except redis.RedisError as error:
            return JSONResponse({"status": f"run registry unavailable: {type(error).__name__}"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus text: requests by route and status, runs submitted and reaped, queued and running now."""
        with contextlib.suppress(redis.RedisError):  # a scrape still answers while Redis is away; the gauges keep
            counts = await asyncio.to_thread(registry.counts)
            recorder.set(CONTROL_RUNS_QUEUED, counts["queued"])
            recorder.set(CONTROL_RUNS_RUNNING, counts["running"])
        return Response(await recorder.exposition(), media_type=recorder.content_type)

    return app


def _usable(spec: RunSpec, settings: ControlSettings, rewards: RewardClient | None) -> None:
    problems = task_size_problems(spec)  # both splits at once: each names its own size
    try:
        if settings.check_task_files:
            check_task_files(spec)
        if rewards is not None and spec.rollout.rewards:
            check_reward_names(spec, rewards.functions())
    except SpecProblem as problem:
        problems.append(problem)
    if problems:
        raise RequestValidationError(
            [{"loc": ("body", *p.loc), "msg": f"Value error, {p}", "type": "value_error"} for p in problems]
        ) from None


def _within_budget(spec: RunSpec, registry: RunRegistry, budget_mib: int) -> None:
    active = [run.spec for run in registry.queued_and_running() if run.spec is not None]
    try:
        check_budget(spec, active, budget_mib)
    except OverBudget as error:
        raise RequestValidationError([{"loc": ("body",), "msg": str(error), "type": "value_error"}]) from None


def _storable(body: SubmitRequest) -> RunSpec:
    """The run spec as workers will read it back from Redis; a value that does not survive JSON (an infinite float:
    Python's JSON parser accepts ``Infinity``) is refused here, with its field, rather than breaking a worker."""
    try:
        return RunSpec.model_validate_json(body.model_dump_json(exclude={"name"}))
    except ValidationError as error:
        raise RequestValidationError(
            [
                {**e, "loc": ("body", *e["loc"]), "msg": f"{e['msg']} (only finite numbers are stored)"}
                for e in error.errors()
            ]
        ) from None
