"""One task setting for every kind, told apart by ``kind``; run specs embed ``TaskSpec`` as a field."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from cfpo.tasks.arithmetic import ArithmeticTask
from cfpo.tasks.files import FileTask
from cfpo.tasks.problem import Problem
from cfpo.tasks.split import Split

TaskSpec = Annotated[ArithmeticTask | FileTask, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[ArithmeticTask | FileTask] = TypeAdapter(TaskSpec)


def parse_task(data: dict[str, Any]) -> ArithmeticTask | FileTask:
    """Validate a task setting (from YAML or JSON); errors name the kind and the field."""
    return _ADAPTER.validate_python(data)


def load_task(spec: ArithmeticTask | FileTask, split: Split = "train") -> list[Problem]:
    """The problems of ``split``; every kind answers the same call with the same record."""
    return spec.load(split)
