"""The wire format of the /v1/runs routes: the run spec as the body of a submit, records and histories back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails, InitErrorDetails

from cfpo.config import StrictModel
from cfpo.registry import RunRecord, RunState, StepRecord
from cfpo.run_spec import RolloutConfig, RunSpec


class SubmitRequest(RunSpec):
    """A run spec (the same fields as a run spec YAML file) with an optional name."""

    name: str | None = Field(None, min_length=1, max_length=200, description="a label for people (ids are generated)")

    @model_validator(mode="before")
    @classmethod
    def _sections_first(cls, data: Any) -> Any:
        """RunSpec derives learner.batch_size from the rollout section before its fields are validated; check the
        two sections here first, so that their errors carry their path and a malformed one is a 422, not a crash."""
        if not isinstance(data, dict):
            return data
        for section in ("rollout", "learner"):
            if data.get(section) is not None and not isinstance(data[section], dict):
                raise _at(section, [{"type": "dict_type", "loc": (), "input": data[section]}])
        try:
            RolloutConfig.model_validate(data.get("rollout") or {})
        except ValidationError as error:
            raise _at("rollout", error.errors()) from None
        return data


def _at(section: str, errors: Sequence[ErrorDetails | InitErrorDetails]) -> ValidationError:
    """The same errors, located under ``section``."""
    located: list[InitErrorDetails] = []
    for e in errors:
        moved: InitErrorDetails = {"type": e["type"], "loc": (section, *e["loc"]), "input": e["input"]}
        if "ctx" in e:
            moved["ctx"] = e["ctx"]
        located.append(moved)
    return ValidationError.from_exception_data(SubmitRequest.__name__, located)


class ListQuery(StrictModel):
    """Query of GET /v1/runs; an unknown parameter (``?status=queued``) is an error, not silently all runs."""

    state: RunState | None = Field(None, description="only runs in this state")
    limit: int = Field(100, ge=1, le=1000)


class HistoryQuery(StrictModel):
    since: int | None = Field(None, description="only steps after this index")
    limit: int = Field(1000, ge=1, le=100_000)


class CancelRequest(StrictModel):
    reason: str = Field("cancelled through the API", min_length=1, max_length=1000)


class RunList(BaseModel):
    runs: list[RunRecord] = Field(description="newest first")


class StepHistory(BaseModel):
    run_id: str
    steps: list[StepRecord] = Field(description="recorded steps, oldest first")
