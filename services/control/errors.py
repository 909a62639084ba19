"""Errors as users read them: every 4xx/5xx body says what is wrong, and a 422 names each field by its path.

An unknown key is the commonest mistake in a nested spec (``{"loss": "grpo"}`` for ``learner.loss.name``), so the
422 for one says where such a field lives: a near spelling at the same level, else a field of that name deeper in
the spec (for a section chosen by name, its ``name``).
"""

from __future__ import annotations

import difflib
import logging
import typing
from collections.abc import Iterator

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.routing import Match
from starlette.types import ExceptionHandler

from cfpo.clients.reward import RewardError
from cfpo.registry import RunNotFound, RunStateError
from services.control.served_models import GenerationUnavailable, ModelMismatch

log = logging.getLogger("cfpo.control")


def install(app: FastAPI) -> None:
    async def unprocessable(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [_problem(e, _body_model(request)) for e in error.errors()]
        return JSONResponse({"detail": problems, "message": "; ".join(p["msg"] for p in problems)}, status_code=422)

    def status(code: int):
        async def handler(request: Request, error: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(error)}, status_code=code)

        return handler

    async def registry_down(request: Request, error: redis.RedisError) -> JSONResponse:
        log.error("registry: %s", error)  # the URL may hold a password: only the log names it
        return JSONResponse({"detail": f"run registry unavailable (Redis): {type(error).__name__}"}, status_code=503)

    # Starlette types handlers on Exception; it calls each with an instance of the class it is registered for.
    app.add_exception_handler(RequestValidationError, typing.cast(ExceptionHandler, unprocessable))
    app.add_exception_handler(405, method_not_allowed)
    app.add_exception_handler(RunNotFound, status(404))
    app.add_exception_handler(RunStateError, status(409))
    app.add_exception_handler(ModelMismatch, status(409))
    app.add_exception_handler(GenerationUnavailable, status(503))
    app.add_exception_handler(RewardError, status(503))  # the reward service could not say its functions
    app.add_exception_handler(redis.RedisError, typing.cast(ExceptionHandler, registry_down))


async def method_not_allowed(request: Request, error: Exception) -> JSONResponse:
    """405 listing every method of the path: Starlette names only those of the first route that matched it."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if route.matches(request.scope)[0] is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return JSONResponse(
        {"detail": f"method {request.method} not allowed; use {', '.join(sorted(methods))}"},
        status_code=405,
        headers={"Allow": ", ".join(sorted(methods))},
    )


def _body_model(request: Request) -> type[BaseModel] | None:
    """The model of the matched route's body (``X | None`` counts as X), whose fields the unknown-key hints search."""
    field = getattr(request.scope.get("route"), "body_field", None)
    annotation = None if field is None else field.field_info.annotation
    return next(filter(None, map(_submodel, (annotation, *typing.get_args(annotation)))), None)


def _problem(error: dict, body_model: type[BaseModel] | None) -> dict:
    """``{"loc", "msg", "type"}`` with ``msg`` starting with the field's dotted path (never the input echoed back)."""
    source, *path = error["loc"]
    where = ".".join(map(str, path))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        hint = _unknown_key_hint(body_model, tuple(path)) if source == "body" and body_model else None
        message = "unknown field" + (f" (did you mean {hint}?)" if hint else "")
    elif error["type"] == "json_invalid":
        where, message = "body", f"not valid JSON: {error.get('ctx', {}).get('error', message)}"
    if not where and error["type"] != "value_error":  # model-level checks name their fields themselves
        where = str(source)
    return {"loc": list(error["loc"]), "msg": f"{where}: {message}" if where else message, "type": error["type"]}


def _unknown_key_hint(root: type[BaseModel], loc: tuple) -> str | None:
    """A near spelling beside the key, else a field of that name under the key's section, else anywhere."""
    *parents, key = loc
    here = _model_at(root, parents)
    if here is not None:
        near = difflib.get_close_matches(str(key), list(here.model_fields), n=1, cutoff=0.8)
        if near:
            return ".".join(map(str, [*parents, near[0]]))
    for scope in [tuple(parents), ()] if parents else [()]:
        section = _model_at(root, scope)
        for path, submodel in _field_paths(section, scope) if section is not None else ():
            if path[-1] == key:
                return ".".join(path + (("name",) if submodel and "name" in submodel.model_fields else ()))
    return None


def _model_at(root: type[BaseModel], path) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in path:
        model = _submodel(model.model_fields[part].annotation) if model and part in model.model_fields else None
    return model


def _field_paths(
    model: type[BaseModel], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], type[BaseModel] | None]]:
    """Every field path of ``model`` through nested models (not unions): a model's own fields before its sections'."""
    nested = []
    for name, field in model.model_fields.items():
        submodel = _submodel(field.annotation)
        yield prefix + (name,), submodel
        if submodel is not None:
            nested.append((prefix + (name,), submodel))
    for path, submodel in nested:
        yield from _field_paths(submodel, path)


def _submodel(annotation: object) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
