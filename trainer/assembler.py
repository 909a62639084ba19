"""Rollout steps from the run's stream: groups buffered by slot until a step's slots are all there.

Workers finish groups out of order; taking a step as exactly the slots admission control assigned to it keeps
every step's staleness what the run asked for, and makes a replay after a restart take the same groups.

The learner reads under its claim's own consumer name. While it waits it takes over what other consumers left
pending (a dead learner's, or a stale one's that read after losing its claim): only one claim holds the run, so
nobody else needs them. Taking an entry twice is harmless: one the learner holds already (the same stream id,
re-delivered after Redis lost its last writes, or reclaimed) is kept as it is, never acknowledged away.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cfpo.queue import QueueEntry, RolloutQueue

log = logging.getLogger("cfpo.learner")
READ_BLOCK_MS = 200
RECLAIM_EVERY_S = 1.0


class DataTimeout(TimeoutError):
    """No worker produced what the learner needs in time."""


class Interrupted(Exception):
    """The wait for a step's groups ends early (the message says why): the run stops, or generation needs a push."""


class StepAssembler:
    def __init__(
        self,
        queue: RolloutQueue,
        consumer: str,
        prompts_per_step: int,
        next_step: int,
        acknowledge: Callable[[list[str]], None],
    ):
        self.queue, self.consumer, self.prompts_per_step = queue, consumer, prompts_per_step
        self.next_step, self.acknowledge = next_step, acknowledge
        self.buffer: dict[int, QueueEntry] = {}
        self.held: set[str] = set()  # taken for a step and not yet acknowledged: a checkpoint will hold them
        self._reclaimed_at = float("-inf")

    def recover(self) -> int:
        """Take back the entries a previous learner read but never acknowledged; returns how many."""
        return self._reclaim()

    def take(self, step: int, timeout: float, check: Callable[[], None]) -> list[QueueEntry]:
        """The groups of ``step`` in slot order, waiting up to ``timeout`` seconds for them; ``check`` (called
        between reads) raises Interrupted to end the wait."""
        first = step * self.prompts_per_step
        slots = range(first, first + self.prompts_per_step)
        self._read_until(slots, timeout, f"step {step}", check)
        self.next_step = step + 1
        entries = [self.buffer.pop(slot) for slot in slots]
        self.held.update(entry.id for entry in entries)
        return entries

    def wait_for_slots_below(self, slot_limit: int, timeout: float, check: Callable[[], None]) -> None:
        """Block until every slot below ``slot_limit`` has been produced (fixed staleness: before the next push)."""
        consumed = self.next_step * self.prompts_per_step
        self._read_until(range(consumed, slot_limit), timeout, f"slots below {slot_limit}", check)

    def acknowledged(self, ids: list[str]) -> None:
        """``ids`` are acknowledged (a checkpoint holds them): a later copy of one is a duplicate."""
        self.held.difference_update(ids)

    def _read_until(self, slots: range, timeout: float, what: str, check: Callable[[], None]) -> None:
        """Read the stream until every slot in ``slots`` is buffered."""
        deadline = time.monotonic() + timeout
        while not all(slot in self.buffer for slot in slots):
            check()
            if time.monotonic() > deadline:
                raise DataTimeout(f"no rollout data for {what} after {timeout:.0f} s: are rollout workers running?")
            if time.monotonic() - self._reclaimed_at >= RECLAIM_EVERY_S:
                self._reclaim()
            for entry in self.queue.read(self.consumer, count=64, block_ms=READ_BLOCK_MS):
                self._add(entry)

    def _reclaim(self) -> int:
        self._reclaimed_at = time.monotonic()
        entries = self.queue.reclaim(self.consumer, min_idle_ms=0, count=100_000)
        if entries:
            log.info("took over %d entries another consumer left pending", len(entries))
        for entry in entries:
            self._add(entry)
        return len(entries)

    def _add(self, entry: QueueEntry) -> None:
        slot = entry.group.slot
        buffered = self.buffer.get(slot)
        if entry.id in self.held or (buffered is not None and buffered.id == entry.id):
            return  # this very entry, delivered again: the learner holds it already
        if slot < self.next_step * self.prompts_per_step or buffered is not None:
            # Applied before the checkpoint this learner resumed from, or a second group for one slot.
            log.warning("skipping %s: slot %d is already applied or buffered", entry.id, slot)
            self.acknowledge([entry.id])
            return
        self.buffer[slot] = entry
