"""Prompt sources. Every task has the same shape (as in PipelineRL): a settings model with a ``kind`` whose
``load(split)`` returns ``Problem`` records. The rollout worker draws them with ``batches`` and renders them with
``render_prompt``; the reward service checks each completion against ``Problem.reference``.

    spec = parse_task({"kind": "arithmetic", "difficulty": [1, 2], "seed": 0})
    problems = load_task(spec, "train")
    for batch in batches(problems, 8, seed=run_seed, start_index=saved_index): ...
"""

from cfpo.tasks.arithmetic import LEVELS, ArithmeticTask
from cfpo.tasks.files import FileTask, TaskDataError
from cfpo.tasks.problem import Problem
from cfpo.tasks.render import RenderedPrompt, render_prompt
from cfpo.tasks.spec import TaskSpec, load_task, parse_task
from cfpo.tasks.split import Split, is_held_out
from cfpo.tasks.stream import batches

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
