"""The fault-injection suite: real processes on loopback (Redis, vLLM, the reward service, control API, learner and
rollout workers), one fault each, and the counts that say what survived (docs/faults.md holds the table).

Every scenario ends with ``counted``: it prints the slots applied, duplicates dropped, dead letters and runs lost
(``pytest tests/faults -s`` shows them), and the scenario asserts each slot applied exactly once.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cfpo.queue import QueueSettings, RolloutQueue
from tests.e2e.conftest import stack, start_run, worker_stack  # noqa: F401 -- fixtures, a stack for this package
from tests.redis_server import redis_url, start_redis  # noqa: F401 -- fixture
from tests.servers import free_port, stop


@dataclass
class OwnRedis:
    """A durable Redis (append-only, fsynced on every write) of one scenario's, to be stopped or restarted."""

    directory: Path
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def restart(self, down_s: float) -> None:
        """kill -9, closed for ``down_s`` seconds, then started again on its append-only file."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        time.sleep(down_s)
        self.process = start_redis(self.directory, self.port, durable=True)


@pytest.fixture
def own_redis(tmp_path) -> Iterator[OwnRedis]:
    directory = tmp_path / "redis"
    directory.mkdir()
    port = free_port()
    server = OwnRedis(directory, port, start_redis(directory, port, durable=True))
    try:
        yield server
    finally:
        stop(server.process, grace=10)


@dataclass(frozen=True)
class Counts:
    slots_applied: int
    distinct_slots: int
    duplicates_dropped: int
    dead_letters: int
    runs_lost: int

    def exactly_once(self, total_slots: int) -> bool:
        return self.slots_applied == self.distinct_slots == total_slots


def counted(scenario: str, run_id: str, run_dir: Path, learner_logs: list[Path], redis: str, lost: int) -> Counts:
    """Count what the run's learner applied and set aside, from its files and its queue, and print it."""
    rows = [json.loads(line) for line in (run_dir / "applied.jsonl").read_text().splitlines()]
    slots = Counter(slot for row in rows for slot in row["slots"])
    dropped = sum(
        len(re.findall(r"skipping \S+: slot \d+ is already applied", log.read_text())) for log in learner_logs
    )
    with RolloutQueue(run_id, QueueSettings(redis_url=redis)) as queue:
        dead = queue.dead_letter_count()
    counts = Counts(sum(slots.values()), len(slots), dropped, dead, lost)
    print(
        f"[fault] {scenario}: slots applied {counts.slots_applied} ({counts.distinct_slots} distinct), "
        f"duplicates dropped {counts.duplicates_dropped}, dead letters {counts.dead_letters}, runs lost {lost}"
    )
    return counts
