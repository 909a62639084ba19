"""Where the stack's processes run: as started (``shared``: every process may use every core; vLLM's CPU worker
binds its own threads as usual), or ``pinned``: generation on one core and the learner on another, the CPU
stand-in for giving each its own device. Pinning uses ``taskset`` on every process of a service's process group
(the stack starts each service in its own session) and is undone on exit."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

GENERATION_CORES = frozenset({0})
LEARNER_CORES = frozenset({1})


class PlacementError(RuntimeError):
    """The machine cannot give generation and the learner a core each."""


def check_pinnable() -> None:
    if shutil.which("taskset") is None:
        raise PlacementError("taskset is not installed (Debian package util-linux); the pinned placement needs it")
    usable = os.sched_getaffinity(0)
    if not usable >= (GENERATION_CORES | LEARNER_CORES):
        raise PlacementError(
            f"the pinned placement needs cores {sorted(GENERATION_CORES | LEARNER_CORES)}; "
            f"this process may use {sorted(usable)}"
        )


def cpu_list(cores: frozenset[int]) -> str:
    return ",".join(map(str, sorted(cores)))


def taskset_prefix(cores: frozenset[int] | None) -> list[str]:
    """The argv prefix that starts a process on ``cores`` (none: wherever the scheduler likes)."""
    return [] if cores is None else ["taskset", "--cpu-list", cpu_list(cores)]


@contextlib.contextmanager
def pinned(groups: dict[int, frozenset[int]]) -> Iterator[None]:
    """Pin every thread of every process in each process group (by its id) to its cores; restore them after.

    Threads a process starts meanwhile inherit its pinning; on exit every thread of a process gets back the
    affinity its main thread had (the threads of each service process share one: vLLM binds its worker's
    threads together)."""
    before = {pid: _affinity(pid) for group in groups for pid in _members(group)}
    try:
        for group, cores in groups.items():
            for pid in _members(group):
                _taskset(pid, cores)
        yield
    finally:
        for pid, cores in before.items():
            with contextlib.suppress(ProcessLookupError):
                _taskset(pid, cores)


def _members(group: int) -> list[int]:
    """Processes whose process group is ``group`` (vLLM's server, engine core and worker; a service's children)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rpartition(")")[2].split()  # after "pid (comm)": state ppid pgrp ...
            if int(fields[2]) == group:
                members.append(int(stat.parent.name))
    return members


def _affinity(pid: int) -> frozenset[int]:
    return frozenset(os.sched_getaffinity(pid))


def _taskset(pid: int, cores: frozenset[int]) -> None:
    done = subprocess.run(
        ["taskset", "--all-tasks", "--cpu-list", "--pid", cpu_list(cores), str(pid)], capture_output=True, text=True
    )
    if done.returncode != 0:
        if not Path(f"/proc/{pid}").exists():
            raise ProcessLookupError(pid)
        raise PlacementError(f"taskset on process {pid}: {done.stderr.strip()}")
