"""What a submit checks beyond the spec's schema, against the world the workers will meet: a generated task holds
the problems the run asks of it, the task's files exist and can be read, and every reward function it names is one
the reward service has. Accepted without these, such a run would sit with its rollout workers failing on it, or
fail at the learner's claim; refused, the 422 names the field.
"""

from __future__ import annotations

import os
from pathlib import Path

from cfpo.run_spec import RunSpec
from cfpo.tasks.arithmetic import ArithmeticTask
from cfpo.tasks.files import FileTask
from cfpo.tasks.problem import Split


class SpecProblem(ValueError):
    """A field of the spec the workers could not use; ``loc`` is its path."""

    def __init__(self, loc: tuple[str, ...], message: str):
        super().__init__(message)
        self.loc = loc


def task_size_problems(spec: RunSpec) -> list[SpecProblem]:
    """Whether the arithmetic task holds ``train_size`` distinct train problems (rollout workers load them) and, when
    the run evaluates, ``eval_size`` eval ones (the learner loads them): counted by the task's own ``capacity``, the
    rule its ``load`` refuses by, without drawing a problem. One problem per split short of its size."""
    if not isinstance(spec.task, ArithmeticTask):
        return []
    splits: tuple[Split, ...] = ("train", "eval") if spec.evaluation.problems else ("train",)
    shortfalls = [(split, spec.task.shortfall(split)) for split in splits]
    return [SpecProblem(("task", f"{split}_size"), problem) for split, problem in shortfalls if problem is not None]


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
