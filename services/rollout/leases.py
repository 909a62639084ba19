"""The slots one rollout worker holds, renewed while it works on them and handed back when it stops.

A slot is a lease (``cfpo.queue``): a heartbeat renews every held slot a few times per lease, so a long generation
keeps its slot while a dead or stalled worker's slots go to the others after one lease.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from cfpo.queue import RolloutQueue

log = logging.getLogger("cfpo.rollout")

RENEWALS_PER_LEASE = 3  # a renewal may be late or fail twice before the lease runs out


class SlotLeases:
    def __init__(self, queue: RolloutQueue, total_slots: int):
        self.queue, self.total_slots = queue, total_slots
        # Unique per worker object; host and pid say whose it is when an operator reads the holders hash.
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._held: set[int] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._heartbeat = threading.Thread(target=self._renew_until_stopped, name="slot-leases", daemon=True)

    def __enter__(self) -> SlotLeases:
        self._heartbeat.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop renewing and release the slots still held (a lane that failed or was stopped leaves them)."""
        self._stopped.set()
        self._heartbeat.join()
        with self._lock:
            held, self._held = sorted(self._held), set()
        if held:
            released = self.queue.release_slots(self.holder, held)
            log.info("released slots %s for other workers (%d still ours)", held, released)

    def reserve(self) -> int | None:
        """A slot to fill, or None when none is free now (see ``all_filled``)."""
        slot = self.queue.reserve_slot(self.holder, self.total_slots)
        if slot is not None:
            with self._lock:
                self._held.add(slot)
        return slot

    def trade_down(self, slot: int) -> int:
        """A lower slot whose lease ran out, in place of ``slot`` (handed back), or ``slot`` itself. A lane waiting
        for admission on a later slot takes it: the learner needs it first, and with every lane waiting on later
        slots a dead worker's earlier ones would otherwise never be filled."""
        lower = self.queue.reserve_expired_slot(self.holder, below=slot)
        if lower is None:
            return slot
        with self._lock:
            self._held.add(lower)
            self._held.discard(slot)
        self.queue.release_slots(self.holder, [slot])
        log.info("took slot %d, whose lease ran out, in place of slot %d", lower, slot)
        return lower

    def filled(self, slot: int) -> None:
        """``slot``'s group is appended: the append ended its lease."""
        with self._lock:
            self._held.discard(slot)

    def all_filled(self) -> bool:
        """Every slot of the run has its group appended: nothing is left for any worker to make."""
        return self.queue.unfilled_slots(self.total_slots) == 0

    def _renew_until_stopped(self) -> None:
        interval = self.queue.settings.slot_lease_s / RENEWALS_PER_LEASE
        while not self._stopped.wait(interval):
            with self._lock:
                held = set(self._held)
            try:
                self.queue.renew_slots(self.holder, held)
            except Exception as error:  # Redis unreachable: the next beat tries again; the lanes will fail too
                log.warning("renewing slot leases %s failed: %s", sorted(held), error)
