"""The learner's step assembly against a real Redis: what it takes over while it waits, what it keeps when an entry
comes twice, and what ends a wait."""

import uuid

import pytest

from cfpo.queue import CONSUMER_GROUP, QueueSettings, RolloutQueue
from tests.cfpo.queue.groups import make_group
from tests.redis_server import redis_url  # noqa: F401 -- the fixture
from trainer.assembler import Interrupted, StepAssembler

PROMPTS = 2


@pytest.fixture
def queue(redis_url):  # noqa: F811 -- the imported fixture
    with RolloutQueue(f"test-{uuid.uuid4().hex[:12]}", QueueSettings(redis_url=redis_url)) as opened:
        yield opened


def _assembler(queue: RolloutQueue, acknowledged: list[str]) -> StepAssembler:
    return StepAssembler(queue, "learner-holder", PROMPTS, 0, lambda ids: acknowledged.extend(ids) or queue.ack(ids))


def _append(queue: RolloutQueue, *slots: int) -> list[str]:
    return [queue.append(make_group(queue.keys.run_id, f"p{slot}", slot=slot)) for slot in slots]


def test_entries_a_stale_learner_read_are_taken_over_while_the_holder_waits(queue):
    ids = _append(queue, 0, 1)
    assert len(queue.read("learner-stale", count=10)) == 2  # a paused learner woke up and read them under its claim
    acknowledged: list[str] = []
    taken = _assembler(queue, acknowledged).take(0, timeout=10, check=lambda: None)
    assert [e.id for e in taken] == ids and acknowledged == []
    owners = queue.redis.xpending(queue.keys.rollouts, CONSUMER_GROUP)["consumers"]
    assert owners == [{"name": b"learner-holder", "pending": 2}]


def test_an_entry_delivered_again_is_kept_and_a_second_group_for_its_slot_acknowledged(queue):
    """Redis re-delivers an entry after losing its last second of writes (the group's last-delivered id rolls back):
    the same stream id again is the learner's own entry, still needed until a checkpoint holds it. A kill -9 cannot
    be timed into that second, so the test moves the group's last-delivered id back as such a crash would."""
    [first, second] = _append(queue, 0, 1)
    acknowledged: list[str] = []
    assembler = _assembler(queue, acknowledged)
    assert [e.id for e in assembler.take(0, timeout=10, check=lambda: None)] == [first, second]
    queue.redis.xgroup_setid(queue.keys.rollouts, CONSUMER_GROUP, "0")
    [duplicate] = _append(queue, 1)  # a late duplicate of slot 1 by a second worker: another stream id
    [third] = _append(queue, 2)
    _append(queue, 3)
    assembler.take(1, timeout=10, check=lambda: None)
    assert acknowledged == [duplicate]  # the re-delivered entries stay pending: the next checkpoint holds them
    pending = queue.redis.xpending_range(queue.keys.rollouts, CONSUMER_GROUP, "-", "+", 10)
    assert {p["message_id"].decode() for p in pending} >= {first, second, third}


def test_a_wait_for_slots_ends_when_the_check_says_so(queue):
    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise Interrupted("the learner is stopping (SIGTERM)")

    with pytest.raises(Interrupted, match="SIGTERM"):
        _assembler(queue, []).wait_for_slots_below(PROMPTS, timeout=30, check=check)
