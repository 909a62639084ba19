"""How many CPU threads the learner trains with, where it shares the machine's cores with generation.

The embedded stack binds vLLM's CPU worker to every core (``cpu_cores: all``), and an idle vLLM server takes no
CPU, so the learner trains on every core in both staleness modes. Measured on 2 cores (SmolLM2-135M, demo
workload, 2026-12-01): synchronous 1.33-1.40 completions/s with 2 learner threads; asynchronous (max staleness 1)
1.24 with 2 threads against 0.92 with 1 (the learner is the bottleneck; leaving generation a core of its own
slows it more than sharing the cores does). ``--threads N`` overrides the choice (the ``pinned`` benchmark
placement, a GPU learner, a machine shared otherwise).
"""

from __future__ import annotations

import os


def learner_threads(setting: int | None = None) -> int:
    """``setting`` when given, otherwise this rank's share of the cores this process may use (every core for a
    lone learner; a node's ranks split them, as ``LOCAL_WORLD_SIZE`` from the launcher says)."""
    if setting is not None:
        return setting
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, len(os.sched_getaffinity(0)) // ranks_here)
