"""How many CPU threads the learner trains a run with, where it shares the machine's cores with generation.

The embedded stack binds vLLM's CPU worker to every core (``cpu_cores: all``), and an idle vLLM server takes no
CPU. So a synchronous run (staleness bound 0: generation and learner take turns) trains on every core, and
generation has every core while the learner waits. An asynchronous run overlaps the two: the learner leaves one
core to generation. ``--threads N`` overrides the choice (a GPU learner, or a machine shared otherwise).
"""

from __future__ import annotations

import os

from cfpo.run_spec import RunSpec


def available_cores() -> int:
    return len(os.sched_getaffinity(0))


def learner_threads(spec: RunSpec, setting: int | None = None) -> int:
    """``setting`` when given; otherwise every core for a synchronous run and all but one for an asynchronous one."""
    if setting is not None:
        return setting
    cores = available_cores()
    return cores if spec.staleness.bound == 0 else max(1, cores - 1)
