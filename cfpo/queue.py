"""The rollout queue of one run: rollout workers append groups to a Redis stream, the learner reads them.

Why it is built this way (docs/architecture.md, "Decisions": the queue):

- The learner reads through the consumer group ``learner``, under a consumer name of its claim's own: an entry
  stays pending until the learner acknowledges it *after applying it*, so a learner that dies mid-batch loses
  nothing; the next one takes its pending entries over with ``reclaim`` (XCLAIM), at its start and while it waits,
  so that entries a stale learner read after losing its claim come back too.
- Acknowledged entries are deleted, so the stream's length is exactly the queue depth (unread + pending), and
  bounding it is one atomic check-and-append (a Lua script). Unread entries are never trimmed: a full queue makes
  producers wait (backpressure) and raise ``QueueFull`` after a timeout.
- A malformed entry (or one the consumer's ``check`` refuses) is moved to the dead-letter stream with its reason,
  counted, and acknowledged, so one bad producer cannot stall or crash the learner or be redelivered forever. A
  refused group of this run gives its slot back to the workers, so that it is generated again.
- For staleness admission control (``cfpo.staleness``) rollout workers take slots (``reserve_slot``), and the
  learner publishes its policy version (``current_version``). A slot is a lease, not a gift: its holder renews it
  while it works, appending the group ends it, and one that runs out (its worker died or stalled) or is released
  (its worker stopped) goes to the next worker that asks, lowest slot first. A late duplicate this may cause is
  dropped by the learner, by slot (``trainer.assembler``), so every slot is applied exactly once.

Every key is under ``run:<id>:``. Any Redis >= 6.2 (XPENDING with IDLE, GETDEL) works.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis
from pydantic import Field
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.typing import EncodableT, FieldT

from cfpo.config import StrictModel, environment
from cfpo.rollout_group import MalformedEntry, RolloutGroup, decode_group, encode_group

log = logging.getLogger(__name__)

CONSUMER_GROUP = "learner"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
T = TypeVar("T")
# A stream entry as this module's client receives it (bytes: decode_responses is off). redis-py's types also cover
# decoded and RESP3 replies. Redis 6.2's XCLAIM gives (None, None) for an entry deleted while pending.
_StreamEntry = tuple[bytes, dict[bytes, bytes]] | tuple[None, None]

# Append only while the stream holds fewer than ARGV[1] entries; nil when full. Atomic, so concurrent producers
# can never overshoot the bound together. The append ends the lease of slot ARGV[2], whoever holds it now.
_APPEND_IF_ROOM = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
"""


# Slot leases: a sorted set of leased slots scored by deadline (Redis's own clock, so workers' clocks never
# matter) and a hash of their holders. Reserve: the lowest slot whose lease ran out, else the next new one below
# ARGV[3]; -1 when neither exists. ARGV[4] = 'expired': only a slot whose lease ran out (below ARGV[3]).
_RESERVE_SLOT = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local slot = nil
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', t)) do
  if tonumber(member) < tonumber(ARGV[3]) and (slot == nil or tonumber(member) < slot) then slot = tonumber(member) end
end
if slot == nil then
  if ARGV[4] == 'expired' then return -1 end
  if tonumber(redis.call('GET', KEYS[3]) or '0') >= tonumber(ARGV[3]) then return -1 end
  slot = redis.call('INCR', KEYS[3]) - 1
end
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), slot)
redis.call('HSET', KEYS[2], slot, ARGV[1])
return slot
"""

# Renew (ARGV[2] seconds from now) or release (ARGV[2] = 0: expired now) the slots in ARGV[3..] that ARGV[1]
# still holds; a slot re-issued to another worker is left to it. Returns how many were ARGV[1]'s.
_EXTEND_LEASES = """
local now = redis.call('TIME')
local deadline = tonumber(now[1]) + tonumber(now[2]) / 1000000 + tonumber(ARGV[2])
local held = 0
for i = 3, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[1] then
    held = held + 1
    redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[i])
    if tonumber(ARGV[2]) == 0 then redis.call('HDEL', KEYS[2], ARGV[i]) end
  end
end
return held
"""

# A slot issued once (below the next new slot) and not leased now goes back as a lease that ran out (score 0), for the
# next worker to fill. Returns 1 if it did.
_REISSUE_SLOT = """
if tonumber(ARGV[1]) >= tonumber(redis.call('GET', KEYS[1]) or '0') then return 0 end
return redis.call('ZADD', KEYS[2], 'NX', 0, ARGV[1])
"""

# Every reply takes milliseconds and the longest blocking read 0.2 s: a call still waiting after this long is on a
# half-open connection or a hung server, and fails (redis.TimeoutError, a RedisError) instead of hanging forever.
REDIS_SOCKET_TIMEOUT_S = 30.0
# A refused or reset connection is a Redis restarting (its container, its append-only file replayed): each call
# tries again for about a minute (0.5, 1, 2, then 4 s apart) before it fails. A hung server is not retried: its
# socket timeout reports it.
REDIS_RESTART_RETRY = Retry(
    ExponentialBackoff(cap=4.0, base=0.25), retries=18, supported_errors=(redis.ConnectionError,)
)


def connect(
    redis_url: str, *, socket_timeout: float = REDIS_SOCKET_TIMEOUT_S, outlast_restarts: bool = True
) -> redis.Redis:
    """The one way this project opens Redis: connect and reply timeouts, TCP keepalive, a PING before reusing a
    connection idle for longer than the timeout (a dead peer is found before a command is lost to it), and calls
    that outlast a restart (``outlast_restarts``: workers; a service that answers probes and requests says 503 at
    once instead, with redis-py's own few quick retries)."""
    return redis.Redis.from_url(
        redis_url,
        socket_connect_timeout=min(socket_timeout, 10.0),
        socket_timeout=socket_timeout,
        socket_keepalive=True,
        health_check_interval=int(socket_timeout),
        **({"retry": REDIS_RESTART_RETRY} if outlast_restarts else {}),
    )


# Also a setting of the rollout worker, which makes the queue's.
SLOT_LEASE_FIELD = Field(
    60.0, gt=0, description="a reserved slot neither appended nor renewed for this long goes to another worker"
)


class QueueSettings(StrictModel):
    redis_url: str = Field(
        default_factory=environment("REDIS_URL", DEFAULT_REDIS_URL),
        description="default: the REDIS_URL environment variable, else a local Redis",
    )
    max_depth: int = Field(64, ge=1, description="groups unread + pending beyond which append waits")
    append_timeout_s: float = Field(300.0, gt=0, description="how long append waits for room before QueueFull")
    poll_interval_s: float = Field(0.05, gt=0, description="how often a waiting producer or version wait re-checks")
    slot_lease_s: float = SLOT_LEASE_FIELD
    dead_letter_max_len: int = Field(
        64, ge=1, description="dead letters kept for inspection (older ones go; the dead-letter count is never reset)"
    )


class QueueFull(TimeoutError):
    """The learner freed no room in the queue within the append timeout."""


@dataclass(frozen=True)
class RunKeys:
    """The Redis keys of one run."""

    run_id: str

    def __post_init__(self) -> None:
        if not _RUN_ID.fullmatch(self.run_id):
            raise ValueError(f"run id {self.run_id!r}: use letters, digits, '.', '_' and '-' (no ':' or spaces)")

    @property
    def rollouts(self) -> str:
        return f"run:{self.run_id}:rollouts"

    @property
    def dead_letter(self) -> str:
        return f"run:{self.run_id}:dead-letter"

    @property
    def dead_letter_count(self) -> str:
        return f"run:{self.run_id}:dead-letter-count"

    @property
    def policy_version(self) -> str:
        return f"run:{self.run_id}:policy-version"

    @property
    def next_slot(self) -> str:
        return f"run:{self.run_id}:next-slot"

    @property
    def slot_leases(self) -> str:
        return f"run:{self.run_id}:slot-leases"

    @property
    def slot_holders(self) -> str:
        return f"run:{self.run_id}:slot-holders"

    @property
    def next_prompt(self) -> str:
        return f"run:{self.run_id}:next-prompt"

    @property
    def push_again(self) -> str:
        return f"run:{self.run_id}:push-again"

    @property
    def every_key(self) -> tuple[str, ...]:
        """All of the run's queue: what goes once the run has ended and its retention passed."""
        return (
            self.rollouts,
            self.dead_letter,
            self.dead_letter_count,
            self.policy_version,
            self.next_slot,
            self.next_prompt,
            self.slot_leases,
            self.slot_holders,
            self.push_again,
        )


@dataclass(frozen=True)
class QueueEntry:
    id: str  # the stream id: acknowledge it after applying the group, and keep it in the learner checkpoint
    group: RolloutGroup


@dataclass(frozen=True)
class DeadLetter:
    id: str  # in the dead-letter stream
    source_id: str  # in the rollout stream
    reason: str
    fields: dict[bytes, bytes]  # the original entry, unchanged


@dataclass(frozen=True)
class QueueDepth:
    unread: int  # appended, not yet delivered to any consumer
    pending: int  # delivered, not yet acknowledged

    @property
    def total(self) -> int:
        return self.unread + self.pending


# Why a well-formed group does not belong in this run's stream (None: it does); the consumer's own rules.
EntryCheck = Callable[[RolloutGroup], str | None]


class RolloutQueue:
    """The rollout stream of one run, for both its producers (``append``) and its consumer (``read``/``ack``).

    ``check``: what the consumer refuses beyond the wire format (the learner: slots the run lacks, token ids its
    model lacks); such entries are dead-lettered like malformed ones."""

    def __init__(self, run_id: str, settings: QueueSettings | None = None, check: EntryCheck | None = None):
        self.keys = RunKeys(run_id)
        self.settings = settings or QueueSettings()
        self.check = check
        self.redis = connect(self.settings.redis_url)
        self._append_if_room = self.redis.register_script(_APPEND_IF_ROOM)
        self._reserve_slot = self.redis.register_script(_RESERVE_SLOT)
        self._extend_leases = self.redis.register_script(_EXTEND_LEASES)
        self._reissue = self.redis.register_script(_REISSUE_SLOT)
        self._create_consumer_group()

    def _create_consumer_group(self) -> None:
        """From id 0, so groups appended before the learner first connects are read too."""
        try:
            self.redis.xgroup_create(self.keys.rollouts, CONSUMER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    # producer side

    def append(self, group: RolloutGroup, timeout_s: float | None = None) -> str:
        """Append ``group``, waiting while the queue is full (default: the settings' timeout); return its stream id.

        This ends the lease of the group's slot."""
        if group.run_id != self.keys.run_id:
            raise ValueError(f"run_id: group of run {group.run_id!r} appended to the queue of run {self.keys.run_id!r}")
        args: list[EncodableT] = [
            self.settings.max_depth,
            group.slot,
            *(part for pair in encode_group(group).items() for part in pair),
        ]
        entry_id = self._poll(
            lambda: self._append_if_room(
                keys=[self.keys.rollouts, self.keys.slot_leases, self.keys.slot_holders], args=args
            ),
            self.settings.append_timeout_s if timeout_s is None else timeout_s,
        )
        if entry_id is None:
            raise QueueFull(
                f"{self.keys.rollouts} holds max_depth={self.settings.max_depth} unread or unacknowledged groups "
                f"and no room was freed in time: is the learner running and acknowledging what it applies?"
            )
        return entry_id.decode()

    # consumer side

    def read(self, consumer: str, count: int = 1, block_ms: int | None = None) -> list[QueueEntry]:
        """Up to ``count`` groups never delivered before, oldest first; they stay pending on ``consumer`` until acked.

        ``block_ms``: wait that long for a first entry (None: do not wait; keep it below the socket timeout).
        Malformed entries are dead-lettered on the way, so fewer than ``count`` may come back even when more were
        waiting.
        """
        reply = self.redis.xreadgroup(CONSUMER_GROUP, consumer, {self.keys.rollouts: ">"}, count=count, block=block_ms)
        streams = cast(list[list[Any]], reply)  # RESP2: [[stream name, list of _StreamEntry]], or [] for none
        return self._decode_valid(streams[0][1] if streams else [])

    def ack(self, ids: list[str]) -> int:
        """Acknowledge (and delete) applied entries; returns how many were pending, so a repeat acknowledges none."""
        if not ids:
            return 0
        with self.redis.pipeline() as transaction:
            transaction.xack(self.keys.rollouts, CONSUMER_GROUP, *ids)
            transaction.xdel(self.keys.rollouts, *ids)
            acknowledged, _ = transaction.execute()
        return acknowledged

    def reclaim(self, consumer: str, min_idle_ms: int, count: int = 100) -> list[QueueEntry]:
        """Take over up to ``count`` entries pending on other consumers for at least ``min_idle_ms`` (a dead or
        stale learner's), oldest first. ``consumer``'s own pending entries are left as they are: it holds them."""
        listed: list[int | bytes | str | memoryview] = []  # what redis-py takes as stream ids
        start = "-"
        while len(listed) < count:
            # bytes: decode_responses is off (redis-py's types also cover decoded replies)
            page = cast(
                list[dict[str, bytes]],
                self.redis.xpending_range(
                    self.keys.rollouts, CONSUMER_GROUP, start, "+", count, idle=min_idle_ms or None
                ),
            )
            listed += [p["message_id"] for p in page if p["consumer"].decode() != consumer]
            if len(page) < count:
                break
            start = f"({page[-1]['message_id'].decode()}"
        if not listed:
            return []
        claimed = self.redis.xclaim(self.keys.rollouts, CONSUMER_GROUP, consumer, min_idle_ms, listed[:count])
        return self._decode_valid(cast(list[_StreamEntry], claimed))

    def depth(self) -> QueueDepth:
        with self.redis.pipeline() as transaction:  # both counts from the same instant
            transaction.xlen(self.keys.rollouts)
            transaction.xpending(self.keys.rollouts, CONSUMER_GROUP)
            length, pending = transaction.execute()
        return QueueDepth(unread=length - pending["pending"], pending=pending["pending"])

    def dead_letter_count(self) -> int:
        """Malformed entries dead-lettered over the run's whole life."""
        return int(self.redis.get(self.keys.dead_letter_count) or 0)

    def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        """The oldest ``count`` dead letters still kept, for inspection."""
        letters = []
        kept = cast(list[tuple[bytes, dict[bytes, bytes]]], self.redis.xrange(self.keys.dead_letter, count=count))
        for letter_id, fields in kept:  # bytes, and XRANGE has no nil entries
            original = dict(fields)
            reason = original.pop(b"dead_letter_reason").decode()
            source_id = original.pop(b"dead_letter_source_id").decode()
            letters.append(DeadLetter(letter_id.decode(), source_id, reason, original))
        return letters

    def _decode_valid(self, messages: list[_StreamEntry]) -> list[QueueEntry]:
        entries = []
        for message in messages:
            if message[0] is None:  # Redis 6.2 reports an entry deleted while pending as nil; 7.0 skips it
                continue
            entry_id, fields = message
            try:
                group = decode_group(fields)
                if group.run_id != self.keys.run_id:
                    raise MalformedEntry(f"run_id: {group.run_id!r} in the queue of run {self.keys.run_id!r}")
            except MalformedEntry as error:
                self._dead_letter(entry_id, fields, error.reason)
                continue
            if self.check is not None and (refused := self.check(group)):
                self._dead_letter(entry_id, fields, refused)
                self._reissue_slot(group.slot)
                continue
            entries.append(QueueEntry(entry_id.decode(), group))
        return entries

    def _reissue_slot(self, slot: int) -> None:
        """A group of this run the consumer refused (the wrong size, say) leaves its slot unfilled: give it back to
        the workers, if it was ever issued and no worker holds it now."""
        if self._reissue(keys=[self.keys.next_slot, self.keys.slot_leases], args=[slot]):
            log.warning("slot %d of %s goes back to the rollout workers", slot, self.keys.rollouts)

    def _dead_letter(self, entry_id: bytes, fields: dict[bytes, bytes], reason: str) -> None:
        """Move the entry to the dead-letter stream, count it and acknowledge it, all or nothing."""
        log.warning("dead-lettered %s %s: %s", self.keys.rollouts, entry_id.decode(), reason)
        letter = {**fields, b"dead_letter_reason": reason.encode(), b"dead_letter_source_id": entry_id}
        with self.redis.pipeline() as transaction:
            transaction.xadd(
                self.keys.dead_letter,
                cast(dict[FieldT, EncodableT], letter),  # bytes to bytes is one of those (dict is invariant)
                maxlen=self.settings.dead_letter_max_len,
                approximate=False,  # exact: each dead letter may be a whole group, and Redis's memory is budgeted
            )
            transaction.incr(self.keys.dead_letter_count)
            transaction.xack(self.keys.rollouts, CONSUMER_GROUP, entry_id)
            transaction.xdel(self.keys.rollouts, entry_id)
            transaction.execute()

    # staleness admission control (cfpo.staleness): slots and the learner's policy version

    def reserve_slot(self, holder: str, total_slots: int) -> int | None:
        """Lease ``holder`` an admission-control slot below ``total_slots`` for the settings' ``slot_lease_s``: the
        lowest one whose lease ran out, else the next new one (0, 1, 2, ...). None: every slot is leased or filled
        now (ask again: a lease may run out; ``unfilled_slots`` says whether any is left)."""
        return self._reserve(holder, total_slots, "any")

    def reserve_expired_slot(self, holder: str, below: int) -> int | None:
        """Lease ``holder`` the lowest slot below ``below`` whose lease ran out (a dead worker's), if any."""
        return self._reserve(holder, below, "expired")

    def _reserve(self, holder: str, below: int, which: str) -> int | None:
        slot = self._reserve_slot(
            keys=[self.keys.slot_leases, self.keys.slot_holders, self.keys.next_slot],
            args=[holder, self.settings.slot_lease_s, below, which],
        )
        return None if slot < 0 else slot

    def renew_slots(self, holder: str, slots: Collection[int]) -> int:
        """Extend the leases ``holder`` still has on ``slots`` by ``slot_lease_s``; returns how many it has."""
        return self._change_leases(holder, slots, self.settings.slot_lease_s)

    def release_slots(self, holder: str, slots: Collection[int]) -> int:
        """End ``holder``'s leases on ``slots`` now, so that the next worker to ask gets them; returns how many."""
        return self._change_leases(holder, slots, 0)

    def _change_leases(self, holder: str, slots: Collection[int], seconds: float) -> int:
        if not slots:
            return 0
        return self._extend_leases(
            keys=[self.keys.slot_leases, self.keys.slot_holders], args=[holder, seconds, *sorted(slots)]
        )

    def unfilled_slots(self, total_slots: int) -> int:
        """Slots below ``total_slots`` no group was appended for: never issued, or leased (running or run out)."""
        with self.redis.pipeline() as transaction:  # both counts from the same instant
            transaction.get(self.keys.next_slot)
            transaction.zcard(self.keys.slot_leases)
            issued, leased = transaction.execute()
        return max(0, total_slots - int(issued or 0)) + leased

    def reserve_prompt(self) -> int:
        """The next index into the run's prompt order (a replaced zero-variance group takes a fresh prompt)."""
        return self.redis.incr(self.keys.next_prompt) - 1

    def publish_version(self, version: int) -> None:
        """Set the learner's policy version (a resumed learner may set an older one: it is the authority)."""
        if version < 0:
            raise ValueError(f"version: {version} is negative")
        self.redis.set(self.keys.policy_version, version)

    def ask_for_push(self, why: str) -> None:
        """A generation server no longer serves the learner's published weights (it restarted on its base weights):
        ask the learner to push them again. Rollout workers ask; the learner answers while it waits for data."""
        self.redis.set(self.keys.push_again, why)

    def push_asked(self) -> str | None:
        """Why a push was asked since the last call (and forget it), or None."""
        why = cast(bytes | None, self.redis.getdel(self.keys.push_again))
        return None if why is None else why.decode()

    def current_version(self) -> int | None:
        """The learner's last published policy version; None before it published one."""
        value = self.redis.get(self.keys.policy_version)
        return None if value is None else int(value)

    def _poll(self, attempt: Callable[[], T | None], timeout_s: float) -> T | None:
        """Call ``attempt`` every poll interval until it returns a value or ``timeout_s`` has passed (then None)."""
        deadline = time.monotonic() + timeout_s
        while (result := attempt()) is None and (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(self.settings.poll_interval_s, remaining))
        return result

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> RolloutQueue:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
