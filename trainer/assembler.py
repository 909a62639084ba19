"""Rollout steps from the run's stream: groups buffered by slot until a step's slots are all there.

Workers finish groups out of order; taking a step as exactly the slots admission control assigned to it keeps
every step's staleness what the run asked for, and makes a replay after a restart take the same groups.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cfpo.queue import QueueEntry, RolloutQueue

log = logging.getLogger("cfpo.learner")
READ_BLOCK_MS = 200


class DataTimeout(TimeoutError):
    """No worker produced what the learner needs in time."""


class Interrupted(Exception):
    """The run must stop while the learner waits for a step's groups (the message says why)."""


class StepAssembler:
    def __init__(self, queue: RolloutQueue, consumer: str, prompts_per_step: int, next_step: int):
        self.queue, self.consumer, self.prompts_per_step = queue, consumer, prompts_per_step
        self.next_step = next_step
        self.buffer: dict[int, QueueEntry] = {}

    def recover(self) -> int:
        """Take back the entries a previous learner read but never acknowledged; returns how many."""
        entries = self.queue.reclaim(self.consumer, min_idle_ms=0, count=100_000)
        for entry in entries:
            self._add(entry)
        return len(entries)

    def take(self, step: int, timeout: float, stop_reason: Callable[[], str | None]) -> list[QueueEntry]:
        """The groups of ``step`` in slot order, waiting up to ``timeout`` seconds for them; raises Interrupted as
        soon as ``stop_reason`` (asked between reads) gives one."""
        first = step * self.prompts_per_step
        slots = range(first, first + self.prompts_per_step)
        self._read_until(slots, timeout, f"step {step}", stop_reason)
        self.next_step = step + 1
        return [self.buffer.pop(slot) for slot in slots]

    def wait_for_slots_below(self, slot_limit: int, timeout: float) -> None:
        """Block until every slot below ``slot_limit`` has been produced (fixed staleness: before the next push)."""
        consumed = self.next_step * self.prompts_per_step
        self._read_until(range(consumed, slot_limit), timeout, f"slots below {slot_limit}")

    def _read_until(
        self, slots: range, timeout: float, what: str, stop_reason: Callable[[], str | None] = lambda: None
    ) -> None:
        """Read the stream until every slot in ``slots`` is buffered."""
        deadline = time.monotonic() + timeout
        while not all(slot in self.buffer for slot in slots):
            if reason := stop_reason():
                raise Interrupted(reason)
            if time.monotonic() > deadline:
                raise DataTimeout(f"no rollout data for {what} after {timeout:.0f} s: are rollout workers running?")
            for entry in self.queue.read(self.consumer, count=64, block_ms=READ_BLOCK_MS):
                self._add(entry)

    def _add(self, entry: QueueEntry) -> None:
        slot = entry.group.slot
        if slot < self.next_step * self.prompts_per_step or slot in self.buffer:
            # Applied before the checkpoint this learner resumed from, or a second group for one slot.
            log.warning("skipping %s: slot %d is already applied or buffered", entry.id, slot)
            self.queue.ack([entry.id])
            return
        self.buffer[slot] = entry
