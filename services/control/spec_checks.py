"""What a submit checks beyond the spec's schema, against the world the workers will meet: the task's files exist
and can be read, and every reward function it names is one the reward service has. Accepted without these, such a
run would sit with its rollout workers failing on it; refused, the 422 names the field.
"""

from __future__ import annotations

import os
from pathlib import Path

from cfpo.run_spec import RunSpec
from cfpo.tasks.files import FileTask


class SpecProblem(ValueError):
    """A field of the spec the workers could not use; ``loc`` is its path."""

    def __init__(self, loc: tuple[str, ...], message: str):
        super().__init__(message)
        self.loc = loc


def check_task_files(spec: RunSpec) -> None:
    """The task's files, as this process sees them (it shares the workers' data volume)."""
    if not isinstance(spec.task, FileTask):
        return
    for field, path in (("path", spec.task.path), ("eval_path", spec.task.eval_path)):
        if path is not None and not _readable_file(path):
            raise SpecProblem(
                ("task", field),
                f"{path}: no readable file there, where the control API sees the workers' data volume; copy the task "
                "there, or fix the path",
            )


def check_reward_names(spec: RunSpec, known: list[str]) -> None:
    """Every reward function ``rollout.rewards`` names is among ``known`` (the reward service's)."""
    for name in spec.rollout.rewards or {}:
        if name not in known:
            raise SpecProblem(
                ("rollout", "rewards", name),
                f"the reward service has no function {name!r}; it has {', '.join(known)} (plugins add more)",
            )


def _readable_file(path: Path) -> bool:
    return path.is_file() and os.access(path, os.R_OK)
