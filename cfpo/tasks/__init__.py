"""Prompt sources. Every task has the same shape (as in PipelineRL): a settings model with a ``kind`` whose
``load(split)`` returns ``Problem`` records. The rollout worker draws them with ``batches`` and renders them with
``render_prompt``; the reward service checks each completion against ``Problem.reference``.

    spec = parse_task({"kind": "arithmetic", "difficulty": [1, 2], "seed": 0})
    problems = load_task(spec, "train")
    for batch in batches(problems, 8, seed=run_seed, start_index=saved_index): ...
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from cfpo.tasks.arithmetic import LEVELS, ArithmeticTask
from cfpo.tasks.files import FileTask, TaskDataError
from cfpo.tasks.problem import Problem, Split, is_held_out
from cfpo.tasks.prompts import RenderedPrompt, batches, render_prompt

__all__ = [
    "LEVELS",
    "ArithmeticTask",
    "FileTask",
    "Problem",
    "RenderedPrompt",
    "Split",
    "TaskDataError",
    "TaskSpec",
    "batches",
    "is_held_out",
    "load_task",
    "parse_task",
    "render_prompt",
]


TaskSpec = Annotated[
    ArithmeticTask | FileTask,
    Field(
        discriminator="kind", json_schema_extra={"required": ["kind"]}
    ),  # pydantic needs the tag, though it has a default
]
_ADAPTER: TypeAdapter[ArithmeticTask | FileTask] = TypeAdapter(TaskSpec)


def parse_task(data: dict[str, Any]) -> ArithmeticTask | FileTask:
    """Validate a task setting (from YAML or JSON); errors name the kind and the field."""
    return _ADAPTER.validate_python(data)


def load_task(spec: ArithmeticTask | FileTask, split: Split = "train") -> list[Problem]:
    """The problems of ``split``; every kind answers the same call with the same record."""
    return spec.load(split)
