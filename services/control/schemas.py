"""The wire format of the /v1/runs routes: the run spec as the body of a submit, records and histories back."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as JsonSchemaError
from pydantic import BaseModel, Field, ModelWrapValidatorHandler, ValidationError, model_validator
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

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

    @model_validator(mode="wrap")
    @classmethod
    def _as_the_schema_says(cls, data: Any, handler: ModelWrapValidatorHandler[SubmitRequest]) -> SubmitRequest:
        """Also hold the body to its published schema: pydantic's lax mode would take ``false`` or ``"5"`` for an
        integer. The model's own errors come first, as they read better than a schema's."""
        request = handler(data)
        errors = [inner for error in _body_schema().iter_errors(data) for inner in _as_its_branch_says(error)]
        if errors:
            raise ValidationError.from_exception_data(
                cls.__name__,
                [
                    {
                        "type": PydanticCustomError("schema", e.message),
                        "loc": tuple(e.absolute_path),
                        "input": e.instance,
                    }
                    for e in errors
                ],
            )
        return request


@functools.cache
def _body_schema() -> Draft202012Validator:
    return Draft202012Validator(SubmitRequest.model_json_schema())


def _as_its_branch_says(error: JsonSchemaError) -> list[JsonSchemaError]:
    """A discriminated union's error, told by the branch its tag names (``task.seed``), not as "no branch fits"."""
    discriminator = error.schema.get("discriminator") if isinstance(error.schema, dict) else None
    if error.validator == "oneOf" and discriminator and isinstance(error.instance, dict):
        tagged = discriminator["mapping"].get(error.instance.get(discriminator["propertyName"]))
        branches = [i for i, branch in enumerate(error.validator_value) if branch.get("$ref") == tagged]
        inner = [e for e in error.context or [] if branches and e.relative_schema_path[0] == branches[0]]
        if inner:
            return [told for e in inner for told in _as_its_branch_says(e)]
    return [error]


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
