"""The run registry: runs as work items in Redis, written by the control API and taken by long-running workers.

Why it is built this way (docs/architecture.md, "Decisions": runs are work items):

- A run is a hash (``run:<id>:record``) plus a capped list of its per-step metrics (``run:<id>:steps``); the ids
  of queued runs wait in one list (``runs:queued``), and every run is in an index ordered by submission
  (``runs:index``). Nothing lives in the API process, so restarting it loses nothing.
- Every state change is one Lua script, so it is atomic: two workers never claim the same run, a cancel never
  races a claim, and the reaper never fails a run whose heartbeat arrived in between.
- Timestamps come from Redis's clock (``TIME``), so heartbeats of workers on other machines are compared on one
  clock. Running runs sit in ``runs:active`` scored by their last heartbeat; ``reap`` fails those whose worker
  went quiet, so a dead worker never leaves a run "running" forever.
- States: queued -> running -> succeeded | failed | cancelled (or queued -> cancelled). Terminal states are final.
  A cancel of a running run only raises a flag (``is_cancelled``): the worker stops at a step boundary and calls
  ``finish(run_id, lease, "cancelled")``.
- A claim is a lease with a fencing token (``Claim.lease``: the claim's number, one more at every claim, and a
  random part the claimer draws, so a claim that Redis forgot in a crash (up to a second of writes under
  ``appendfsync everysec``) is never handed out again as the same token). A run goes back to the queue,
  at its head, when its worker hands it back (``release``: the learner got SIGTERM and checkpointed) or goes
  silent (``reap``, up to ``max_restarts`` times; then it fails); the next claim resumes it from its checkpoint.
  Every worker-side write names its lease and is refused (``LeaseLost``) once the run was taken over, so a stalled
  learner that wakes up cannot record a step, acknowledge stream entries, push weights (the learner checks first:
  ``heartbeat``) or end it.

Worker side, in full::

    registry = RunRegistry(redis_url)
    claim = registry.claim_next("learner-0")              # None when nothing is queued
    if claim is not None:
        run_id, spec, lease = claim
        with registry.heartbeating(run_id, lease):       # a thread beats every few seconds
            registry.rewind(run_id, lease, start_step)    # a resumed run forgets the steps it replays
            for step in range(start_step, spec.steps):
                if registry.is_cancelled(run_id):
                    registry.finish(run_id, lease, "cancelled")
                    break
                ...                                       # train the step
                registry.record_step(run_id, lease, step, version, metrics)
                registry.acknowledge(run_id, lease, entry_ids)  # once a checkpoint holds them
            else:
                registry.finish(run_id, lease, "succeeded")  # or "failed" with a reason on an error
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, cast, get_args

import redis
from pydantic import BaseModel, Field, ValidationError, computed_field

from cfpo.config import describe_validation_error, environment
from cfpo.queue import CONSUMER_GROUP, DEFAULT_REDIS_URL, RunKeys, connect
from cfpo.run_spec import RunSpec

log = logging.getLogger(__name__)

RunState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FinalState = Literal["succeeded", "failed", "cancelled"]
FINAL_STATES: tuple[str, ...] = get_args(FinalState)

INDEX_KEY = "runs:index"  # every run id, scored by submission time
QUEUED_KEY = "runs:queued"  # ids waiting for a worker, oldest first
ACTIVE_KEY = "runs:active"  # ids of running runs, scored by their last heartbeat
ENDED_KEY = "runs:ended"  # ids of ended runs whose queue is still kept, scored by when they ended
RECORD_PREFIX, RECORD_SUFFIX = "run:", ":record"  # scripts build record keys of ids they pop from these two parts

# Every script starts here: `now` is Redis's clock, one clock for every process that touches a run.
_PRELUDE = """
local t = redis.call('TIME')
local now = string.format('%d.%06d', t[1], t[2])
local function record_of(id) return ARGV[1] .. id .. ARGV[2] end
local function requeue(record, id, reason, queued)
  redis.call('HSET', record, 'state', 'queued', 'restart_reason', reason)
  redis.call('HINCRBY', record, 'restarts', 1)
  redis.call('LPUSH', queued, id)
end
"""

# Worker-side scripts go on only while the run (record KEYS[1]) is running under lease ARGV[4] (the fencing token
# the claim returned, stored as 'token'; 'lease' counts the claims); else they return why not.
_FENCE = """
local function fenced(record, token)
  local state, held, lease = unpack(redis.call('HMGET', record, 'state', 'token', 'lease'))
  if not state then return 'missing' end
  if state ~= 'running' then return state end
  if held ~= token then return 'stale lease ' .. token .. ': the run was taken over (lease ' .. lease .. ')' end
  return 'ok'
end

local outcome = fenced(KEYS[1], ARGV[4])
if outcome ~= 'ok' then return outcome end"""


def _fenced(body: str) -> str:
    """A worker-side script: ``body`` runs after the lease check, which every such script shares from here."""
    return _PRELUDE + _FENCE + body


# KEYS: record, index, queued. ARGV: prefix, suffix, id, field/value pairs of the new record.
_SUBMIT = (
    _PRELUDE
    + """
redis.call('HSET', KEYS[1], 'state', 'queued', 'created_at', now, unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], now, ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[3])
return now
"""
)

# KEYS: queued, active. ARGV: prefix, suffix, worker, the claimer's random part of the token. Skips ids whose run is
# no longer queued.
_CLAIM = (
    _PRELUDE
    + """
while true do
  local id = redis.call('LPOP', KEYS[1])
  if not id then return false end
  local record = record_of(id)
  if redis.call('HGET', record, 'state') == 'queued' then
    redis.call('HSET', record, 'state', 'running', 'worker', ARGV[3], 'heartbeat_at', now)
    redis.call('HSETNX', record, 'started_at', now)
    local lease = redis.call('HINCRBY', record, 'lease', 1)
    local token = lease .. '-' .. ARGV[4]
    redis.call('HSET', record, 'token', token)
    redis.call('ZADD', KEYS[2], now, id)
    return {id, redis.call('HGET', record, 'spec'), token}
  end
end
"""
)

# KEYS: record, active. ARGV: prefix, suffix, id, lease. Returns 'ok' or why not.
_HEARTBEAT = _fenced(
    """
redis.call('HSET', KEYS[1], 'heartbeat_at', now)
redis.call('ZADD', KEYS[2], now, ARGV[3])
return 'ok'
"""
)

# KEYS: record, steps, active. ARGV: prefix, suffix, id, lease, step, version, latest metrics, entry, history
# length. A recorded step is also a heartbeat. The entry gets the time here: '{"time": now, ' .. the rest of ARGV[8].
_RECORD_STEP = _fenced(
    """
local last = redis.call('LINDEX', KEYS[2], -1)
if not last or cjson.decode(last)['step'] < tonumber(ARGV[5]) then  -- a call retried after a lost reply: once
  redis.call('RPUSH', KEYS[2], '{"time": ' .. now .. ', ' .. string.sub(ARGV[8], 2))
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[9]), -1)
end
redis.call('HSET', KEYS[1], 'steps_done', tonumber(ARGV[5]) + 1, 'version', ARGV[6], 'metrics', ARGV[7],
           'heartbeat_at', now)
redis.call('ZADD', KEYS[3], now, ARGV[3])
return 'ok'
"""
)

# KEYS: record, steps. ARGV: prefix, suffix, id, lease, first step. A run resumed from a checkpoint at ARGV[5]
# replays the steps from there: their entries go, so the history holds each step once.
_REWIND = _fenced(
    """
local first = tonumber(ARGV[5])
while true do
  local last = redis.call('LINDEX', KEYS[2], -1)
  if not last or cjson.decode(last)['step'] < first then break end
  redis.call('RPOP', KEYS[2])
end
redis.call('HSET', KEYS[1], 'steps_done', first)
return 'ok'
"""
)

# KEYS: record, stream, ARGV: prefix, suffix, id, lease, consumer group, entry ids. The learner's acknowledgement of
# entries a checkpoint holds, deleted with it, while its claim holds: a stale learner's would drop what the holder
# still needs. Returns 'ok'.
_ACKNOWLEDGE = _fenced(
    """
redis.call('XACK', KEYS[2], ARGV[5], unpack(ARGV, 6))
redis.call('XDEL', KEYS[2], unpack(ARGV, 6))
return 'ok'
"""
)

# KEYS: record, queued, active. ARGV: prefix, suffix, id, lease, reason. The worker hands the run back to the head
# of the queue (it checkpointed and is stopping); the next claim resumes it.
_RELEASE = _fenced(
    """
requeue(KEYS[1], ARGV[3], ARGV[5], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[3])
return 'ok'
"""
)

# KEYS: record, active, ended. ARGV: prefix, suffix, id, lease, final state, reason ('' for none). Only a running run
# finishes; a cancelled one keeps the reason given with the cancel unless the worker names another.
_FINISH = _fenced(
    """
local cancel_reason = redis.call('HGET', KEYS[1], 'cancel_reason')
local reason = ARGV[6]
if reason == '' and ARGV[5] == 'cancelled' then reason = cancel_reason or 'cancelled' end
redis.call('HSET', KEYS[1], 'state', ARGV[5], 'finished_at', now)
if reason == '' then redis.call('HDEL', KEYS[1], 'reason') else redis.call('HSET', KEYS[1], 'reason', reason) end
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], now, ARGV[3])
return 'ok'
"""
)

# KEYS: record, queued, ended. ARGV: prefix, suffix, id, reason. A queued run ends now; a running one gets the flag.
# Returns the state the run had.
_CANCEL = (
    _PRELUDE
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'reason', ARGV[4], 'cancel_reason', ARGV[4], 'finished_at', now)
  redis.call('LREM', KEYS[2], 0, ARGV[3])
  redis.call('ZADD', KEYS[3], now, ARGV[3])
elseif state == 'running' and not redis.call('HGET', KEYS[1], 'cancel_reason') then
  redis.call('HSET', KEYS[1], 'cancel_reason', ARGV[4])
end
return state
"""
)

# KEYS: active, queued, ended. ARGV: prefix, suffix, timeout in seconds, most restarts. Every running run whose last
# heartbeat is older goes back to the queue for another worker to resume, or, once it has had its restarts (or a
# cancel was asked), ends. Returns {id, what happened} pairs.
_REAP = (
    _PRELUDE
    + """
local timeout = tonumber(ARGV[3])
local reaped = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (tonumber(now) - timeout))) do
  local record = record_of(id)
  local state, worker, beat, cancel_reason, restarts = unpack(redis.call('HMGET', record, 'state', 'worker',
                                                                         'heartbeat_at', 'cancel_reason', 'restarts'))
  if state == 'running' then
    local silence = string.format('no heartbeat from worker %s for %.1f s (timeout %s s)', worker,
                                  tonumber(now) - tonumber(beat), ARGV[3])
    if cancel_reason then
      redis.call('HSET', record, 'state', 'cancelled', 'reason', cancel_reason .. '; then ' .. silence,
                 'finished_at', now)
      redis.call('ZADD', KEYS[3], now, id)
      table.insert(reaped, {id, 'cancelled'})
    elseif tonumber(restarts or '0') < tonumber(ARGV[4]) then
      requeue(record, id, silence, KEYS[2])
      table.insert(reaped, {id, 'requeued'})
    else
      redis.call('HSET', record, 'state', 'failed', 'finished_at', now,
                 'reason', silence .. string.format('; restarted %s times already', restarts or '0'))
      redis.call('ZADD', KEYS[3], now, id)
      table.insert(reaped, {id, 'failed'})
    end
  end
  redis.call('ZREM', KEYS[1], id)
end
return reaped
"""
)


class RunNotFound(LookupError):
    """No run has this id."""

    def __init__(self, run_id: str):
        super().__init__(f"run {run_id!r}: no such run")


class RunStateError(RuntimeError):
    """The run is not in a state that allows the call (e.g. finishing a run that was already reaped)."""


class LeaseLost(RunStateError):
    """The run is no longer this claim's: it went back to the queue, or another worker took it over."""


@dataclass(frozen=True)
class RegistryKeys:
    """The registry's keys of one run, beside the rollout keys of ``cfpo.queue.RunKeys`` (same id rules)."""

    run_id: str

    def __post_init__(self) -> None:
        RunKeys(self.run_id)  # raises ValueError for an id that cannot be part of a key

    @property
    def record(self) -> str:
        return f"{RECORD_PREFIX}{self.run_id}{RECORD_SUFFIX}"

    @property
    def steps(self) -> str:
        return f"run:{self.run_id}:steps"


class Staleness(BaseModel):
    mode: Literal["bounded", "fixed"]
    bound: int = Field(description="the largest staleness admitted (bounded) or the exact one (fixed)")
    latest_mean: float | None = Field(description="mean staleness of the latest step's samples, once measured")


class RunRecord(BaseModel):
    """A run as stored; times are seconds since the epoch on Redis's clock."""

    id: str
    name: str | None = None
    state: RunState
    reason: str | None = Field(None, description="why the run failed or was cancelled")
    spec: RunSpec | None = Field(description="the run's spec; null when the stored one no longer validates")
    spec_error: str | None = Field(
        None,
        description="why the stored spec no longer validates (the spec schema changed since the run was submitted); "
        "such a run is shown but never worked on: a claim fails it with this reason",
    )
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = Field(None, description="the worker that claimed the run")
    heartbeat_at: float | None = Field(None, description="the worker's last heartbeat (or recorded step)")
    cancel_reason: str | None = Field(None, description="set when a cancel was asked; the worker stops at a step")
    steps_done: int = Field(0, description="steps recorded so far (the last recorded step index + 1)")
    version: int | None = Field(None, description="the learner's policy version after the last recorded step")
    metrics: dict[str, Any] = Field({}, description="the last recorded step's metrics")
    lease: int = Field(0, description="the number of the latest claim (one more at every claim)")
    restarts: int = Field(0, description="times the run went back to the queue to be resumed from its checkpoint")
    restart_reason: str | None = Field(None, description="why it last went back to the queue")

    @computed_field  # type: ignore[prop-decorator]  # mypy rejects decorated properties; pydantic documents this
    @property
    def steps(self) -> int | None:
        return None if self.spec is None else self.spec.steps

    @computed_field  # type: ignore[prop-decorator]  # mypy rejects decorated properties; pydantic documents this
    @property
    def staleness(self) -> Staleness | None:
        if self.spec is None:
            return None
        latest = self.metrics.get("staleness_mean")
        return Staleness(
            mode=self.spec.staleness.mode,
            bound=self.spec.staleness.bound,
            latest_mean=latest if isinstance(latest, int | float) else None,
        )

    @classmethod
    def from_hash(cls, run_id: str, fields: dict[bytes, bytes]) -> RunRecord:
        data: dict[str, Any] = {key.decode(): value.decode() for key, value in fields.items()}
        try:
            data["spec"] = RunSpec.model_validate_json(data["spec"])
        except ValidationError as error:  # stored under an older schema: show the run, say why it cannot run
            data["spec"], data["spec_error"] = None, describe_validation_error(error)
        data["metrics"] = json.loads(data.get("metrics", "{}"))
        return cls(id=run_id, **data)


class StepRecord(BaseModel):
    step: int = Field(description="the step's index (0-based)")
    version: int
    time: float
    metrics: dict[str, Any]


class Claim(NamedTuple):
    run_id: str
    spec: RunSpec
    lease: str  # the fencing token every worker-side call names: the claim's number and a random part, never repeated

    @property
    def number(self) -> int:
        """The claim's number: one more at every claim of the run (the record's ``lease``)."""
        return int(self.lease.partition("-")[0])


class Heartbeat:
    """Beats for a run from a daemon thread; ``lost`` is set once the run is no longer the lease's."""

    def __init__(self, registry: RunRegistry, run_id: str, lease: str, every_s: float):
        self.registry, self.run_id, self.lease, self.every_s = registry, run_id, lease, every_s
        self.lost = threading.Event()
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.registry.heartbeat(self.run_id, self.lease)
            except (RunStateError, RunNotFound) as error:
                self.reason = str(error)
                self.lost.set()
                return
            except redis.RedisError as error:  # transient: the next beat may get through before the timeout
                log.warning("heartbeat of run %s failed: %s", self.run_id, error)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class RunRegistry:
    """Runs in Redis: the control side (``submit``, ``get``, ``list_runs``, ``queued_and_running``, ``cancel``,
    ``history``, ``reap``, ``drop_ended_queues``) and the worker side (``claim_next``, ``running``,
    ``heartbeat``/``heartbeating``, ``rewind``, ``record_step``, ``acknowledge``, ``is_cancelled``, ``release``,
    ``finish``)."""

    def __init__(self, redis_url: str | None = None, *, history_length: int = 10_000, outlast_restarts: bool = True):
        url = redis_url or environment("REDIS_URL", DEFAULT_REDIS_URL)()
        self.redis = connect(url, outlast_restarts=outlast_restarts)
        self.history_length = history_length  # step entries kept per run; older ones are trimmed
        self._scripts = {
            name: self.redis.register_script(source)
            for name, source in (
                ("submit", _SUBMIT),
                ("claim", _CLAIM),
                ("heartbeat", _HEARTBEAT),
                ("record_step", _RECORD_STEP),
                ("rewind", _REWIND),
                ("release", _RELEASE),
                ("finish", _FINISH),
                ("acknowledge", _ACKNOWLEDGE),
                ("cancel", _CANCEL),
                ("reap", _REAP),
            )
        }

    def _run(self, script: str, keys: list[str], *args: Any) -> Any:
        return self._scripts[script](keys=keys, args=[RECORD_PREFIX, RECORD_SUFFIX, *args])

    # control side

    def submit(self, spec: RunSpec, name: str | None = None) -> RunRecord:
        """Queue a run of ``spec``; returns its record with a new id."""
        run_id = uuid.uuid4().hex[:12]
        keys = RegistryKeys(run_id)
        fields = {"spec": spec.model_dump_json(), **({"name": name} if name is not None else {})}
        self._run(
            "submit", [keys.record, INDEX_KEY, QUEUED_KEY], run_id, *(part for pair in fields.items() for part in pair)
        )
        return self.get(run_id)

    def get(self, run_id: str) -> RunRecord:
        fields = cast(dict[bytes, bytes], self.redis.hgetall(_keys(run_id).record))  # bytes: no decode_responses
        if not fields:
            raise RunNotFound(run_id)
        return RunRecord.from_hash(run_id, fields)

    def list_runs(self, state: RunState | None = None, limit: int = 100) -> list[RunRecord]:
        """The newest ``limit`` runs (in ``state``, if given), newest first."""
        found: list[str] = []
        start, page = 0, max(limit, 100)
        while len(found) < limit:
            page_ids = cast(list[bytes], self.redis.zrevrange(INDEX_KEY, start, start + page - 1))  # bytes, no scores
            ids = [i.decode() for i in page_ids]
            if not ids:
                break
            if state is not None:
                with self.redis.pipeline(transaction=False) as pipe:
                    for run_id in ids:
                        pipe.hget(RegistryKeys(run_id).record, "state")
                    ids = [i for i, s in zip(ids, pipe.execute()) if s is not None and s.decode() == state]
            found += ids[: limit - len(found)]
            start += page
        return self._records(found)

    def queued_and_running(self) -> list[RunRecord]:
        """The queued and running runs, with ids read from the queue and the active set: every submit's budget
        check asks, and ``list_runs`` by state walks the index of every run ever submitted."""
        with self.redis.pipeline() as transaction:  # one snapshot: a run claimed meanwhile is in exactly one of them
            transaction.lrange(QUEUED_KEY, 0, -1)
            transaction.zrange(ACTIVE_KEY, 0, -1)
            queued, running = transaction.execute()
        records = self._records([i.decode() for i in [*queued, *running]])
        return [record for record in records if record.state in ("queued", "running")]  # one may have ended since

    def running(self) -> list[RunRecord]:
        """The running runs, from the active set: rollout workers ask every second or so."""
        ids = cast(list[bytes], self.redis.zrange(ACTIVE_KEY, 0, -1))
        return [record for record in self._records([i.decode() for i in ids]) if record.state == "running"]

    def _records(self, run_ids: list[str]) -> list[RunRecord]:
        """The records of ``run_ids``, in their order, in one round trip (those deleted since are left out)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hgetall(RegistryKeys(run_id).record)
            return [RunRecord.from_hash(i, fields) for i, fields in zip(run_ids, pipe.execute()) if fields]

    def cancel(self, run_id: str, reason: str = "cancelled through the API") -> RunRecord:
        """End a queued run now; ask a running one to stop (its worker sees ``is_cancelled``). Repeats are no-ops."""
        keys = _keys(run_id)
        before = self._run("cancel", [keys.record, QUEUED_KEY, ENDED_KEY], run_id, reason).decode()
        if before == "missing":
            raise RunNotFound(run_id)
        if before in ("succeeded", "failed"):
            raise RunStateError(f"run {run_id}: already {before}, nothing to cancel")
        return self.get(run_id)

    def history(self, run_id: str, since: int | None = None, limit: int = 1000) -> list[StepRecord]:
        """Recorded steps with index > ``since`` (all if None), oldest first, at most ``limit``."""
        keys = _keys(run_id)
        if not self.redis.exists(keys.record):  # an unknown run, not an empty history
            raise RunNotFound(run_id)
        entries = (StepRecord.model_validate_json(raw) for raw in self.redis.lrange(keys.steps, 0, -1))
        return [entry for entry in entries if since is None or entry.step > since][:limit]

    def reap(self, timeout_s: float, max_restarts: int) -> list[tuple[str, str]]:
        """Requeue every running run without a heartbeat for ``timeout_s``, to be resumed by the next worker; fail
        one restarted ``max_restarts`` times already, and cancel one whose cancel was asked. Returns (run id,
        "requeued" | "failed" | "cancelled") pairs."""
        reaped = self._run("reap", [ACTIVE_KEY, QUEUED_KEY, ENDED_KEY], timeout_s, max_restarts)
        return [(run_id.decode(), outcome.decode()) for run_id, outcome in reaped]

    def drop_ended_queues(self, retention_s: float) -> list[str]:
        """Delete the queues (rollout stream, dead letters, slots, version) of runs that ended over ``retention_s``
        ago; their records and histories stay. Returns their ids."""
        seconds, microseconds = self.redis.time()
        cutoff = seconds + microseconds / 1e6 - retention_s
        ids = [i.decode() for i in cast(list[bytes], self.redis.zrangebyscore(ENDED_KEY, "-inf", f"({cutoff}"))]
        if ids:
            with self.redis.pipeline() as transaction:
                for run_id in ids:
                    transaction.delete(*RunKeys(run_id).every_key)
                transaction.zrem(ENDED_KEY, *ids)
                transaction.execute()
        return ids

    def counts(self) -> dict[str, int]:
        """Queued and running runs right now (cheap: two lengths), for gauges."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(QUEUED_KEY)
            pipe.zcard(ACTIVE_KEY)
            queued, running = pipe.execute()
        return {"queued": queued, "running": running}

    def ping(self) -> bool:
        return bool(self.redis.ping())

    # worker side

    def claim_next(self, worker: str) -> Claim | None:
        """Take the oldest queued run for ``worker`` (atomically: no other worker gets it); None if none is queued.

        A run handed back or requeued after its worker went silent is at the head of the queue; its claim has the
        next lease, and the checkpoint in its run directory says where to resume."""
        _check_worker(worker)
        while (claimed := self._run("claim", [QUEUED_KEY, ACTIVE_KEY], worker, uuid.uuid4().hex[:12])) is not None:
            run_id, spec, lease = claimed[0].decode(), claimed[1], claimed[2].decode()
            try:
                return Claim(run_id, RunSpec.model_validate_json(spec), lease)
            except ValidationError as error:  # no worker can run it: fail it with the reason, take the next
                reason = f"its stored spec no longer validates: {describe_validation_error(error)}"
                log.error("run %s: %s", run_id, reason)
                self.finish(run_id, lease, "failed", reason)
        return None

    def heartbeat(self, run_id: str, lease: str) -> None:
        """Say the holder of ``lease`` is alive and still on the run; raises LeaseLost (or RunStateError, once the run
        ended) when it is not. Also the check before a weight push."""
        keys = _keys(run_id)
        self._checked(run_id, self._run("heartbeat", [keys.record, ACTIVE_KEY], run_id, lease))

    @contextlib.contextmanager
    def heartbeating(self, run_id: str, lease: str, every_s: float = 5.0) -> Iterator[Heartbeat]:
        """Heartbeat from a background thread while the block runs; yields the ``Heartbeat`` (see its ``lost``).

        Beat several times per reaper timeout (the API's default timeout is 60 s)."""
        self.heartbeat(run_id, lease)
        beat = Heartbeat(self, run_id, lease, every_s).start()
        try:
            yield beat
        finally:
            beat.stop()

    def rewind(self, run_id: str, lease: str, first_step: int) -> None:
        """The run resumes at ``first_step``: drop the recorded steps from there on (they are trained again)."""
        keys = _keys(run_id)
        self._checked(run_id, self._run("rewind", [keys.record, keys.steps], run_id, lease, first_step))

    def release(self, run_id: str, lease: str, reason: str) -> None:
        """Hand a running run back to the head of the queue (its state is checkpointed), for the next claim."""
        keys = _keys(run_id)
        self._checked(run_id, self._run("release", [keys.record, QUEUED_KEY, ACTIVE_KEY], run_id, lease, reason))

    def record_step(self, run_id: str, lease: str, step: int, version: int, metrics: dict[str, Any]) -> None:
        """Record step ``step`` (0-based) done at policy ``version``; also a heartbeat. Non-finite numbers are kept
        as the strings "nan", "inf", "-inf" (JSON has no such numbers)."""
        keys = _keys(run_id)
        safe = _json_safe(metrics)
        if not isinstance(safe, dict):
            raise TypeError(f"metrics: expected a mapping, got {type(metrics).__name__}")
        latest = json.dumps(safe)
        entry = json.dumps({"step": step, "version": version, "metrics": safe})
        reply = self._run(
            "record_step",
            [keys.record, keys.steps, ACTIVE_KEY],
            run_id,
            lease,
            int(step),
            int(version),
            latest,
            entry,
            self.history_length,
        )
        self._checked(run_id, reply)

    def acknowledge(self, run_id: str, lease: str, entry_ids: list[str]) -> None:
        """Acknowledge and delete the run's stream entries ``entry_ids`` (applied, and held by a checkpoint) while the
        claim holds: checked with the write, in one script, so a stale holder can drop nothing."""
        if not entry_ids:
            return
        keys = _keys(run_id)
        stream = RunKeys(run_id).rollouts
        self._checked(
            run_id, self._run("acknowledge", [keys.record, stream], run_id, lease, CONSUMER_GROUP, *entry_ids)
        )

    def finish(self, run_id: str, lease: str, state: FinalState, reason: str | None = None) -> None:
        """End a running run. ``cancelled`` without a reason keeps the reason given with the cancel."""
        if state not in FINAL_STATES:
            raise ValueError(f"state: {state!r} is not one of {FINAL_STATES}")
        keys = _keys(run_id)
        self._checked(
            run_id, self._run("finish", [keys.record, ACTIVE_KEY, ENDED_KEY], run_id, lease, state, reason or "")
        )

    def is_cancelled(self, run_id: str) -> bool:
        """Whether a cancel was asked (the worker should stop at the next step boundary)."""
        cancel_reason, state = self.redis.hmget(_keys(run_id).record, "cancel_reason", "state")
        if state is None:
            raise RunNotFound(run_id)
        return cancel_reason is not None

    @staticmethod
    def _checked(run_id: str, reply: bytes) -> None:
        outcome = reply.decode()
        if outcome == "missing":
            raise RunNotFound(run_id)
        if outcome in FINAL_STATES:
            raise RunStateError(f"run {run_id}: {outcome}, not running")
        if outcome == "queued":
            raise LeaseLost(f"run {run_id}: back in the queue, no longer this worker's")
        if outcome.startswith("stale lease"):
            raise LeaseLost(f"run {run_id}: {outcome}")
        if outcome != "ok":
            raise RunStateError(f"run {run_id}: {outcome}")

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> RunRegistry:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _keys(run_id: str) -> RegistryKeys:
    """The run's keys; an id that cannot be a key names no run."""
    try:
        return RegistryKeys(run_id)
    except ValueError:
        raise RunNotFound(run_id) from None


def _check_worker(worker: str) -> None:
    if not worker or not worker.isprintable():
        raise ValueError(f"worker: {worker!r} must be a non-empty printable name")


def _json_safe(value: Any) -> Any:
    """Plain JSON values from metrics (numpy/torch scalars become floats; NaN and infinities become strings)."""
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    number = float(value)
    return number if math.isfinite(number) else str(number)
