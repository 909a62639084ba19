"""The rollout queue against a real redis-server: delivery, acknowledgement, reclaim, dead letters, backpressure."""

import os
import signal
import threading
import time

import pytest
import redis as redis_py
from pydantic import ValidationError

from cfpo.queue import CONSUMER_GROUP, QueueFull, QueueSettings, RolloutQueue, RunKeys, connect
from cfpo.rollout_group import encode_group
from tests.cfpo.queue.groups import MALFORMED, make_group


def in_thread(target, *args) -> tuple[threading.Thread, dict]:
    """Run ``target(*args)``; the dict gets its ``result`` or ``error`` and the ``seconds`` it took."""
    outcome: dict = {}

    def run():
        start = time.monotonic()
        try:
            outcome["result"] = target(*args)
        except Exception as error:  # handed back to the test, which asserts on it
            outcome["error"] = error
        outcome["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_groups_arrive_whole_and_in_order(make_queue, run_id):
    producer, learner = make_queue(), make_queue()
    groups = [make_group(run_id, f"p{i}", rewards=(i, 0.0)) for i in range(5)]
    ids = [producer.append(group) for group in groups]

    entries = learner.read("learner-0", count=10)

    assert [e.id for e in entries] == ids
    assert [e.group for e in entries] == groups
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


def test_runs_do_not_share_a_stream(make_queue, run_id, redis_url):
    make_queue().append(make_group(run_id))
    with RolloutQueue(f"{run_id}-other", QueueSettings(redis_url=redis_url)) as other:
        assert other.read("learner-0", count=10) == []
        with pytest.raises(ValueError, match="appended to the queue of run"):
            other.append(make_group(run_id))


def test_read_waits_for_an_append(make_queue, run_id):
    producer, learner = make_queue(), make_queue()
    assert learner.read("learner-0") == []  # no block_ms: returns at once
    thread, outcome = in_thread(learner.read, "learner-0", 1, 5000)
    time.sleep(0.1)
    entry_id = producer.append(make_group(run_id))
    thread.join(5)
    assert [e.id for e in outcome["result"]] == [entry_id]
    assert outcome["seconds"] < 2


def test_each_entry_is_delivered_and_acknowledged_exactly_once(make_queue, run_id):
    producer, learner = make_queue(), make_queue()
    ids = [producer.append(make_group(run_id, f"p{i}")) for i in range(6)]
    assert (learner.depth().unread, learner.depth().pending) == (6, 0)

    first, second = learner.read("learner-0", count=4), learner.read("learner-1", count=4)
    delivered = [e.id for e in first + second]
    assert delivered == ids and len(second) == 2
    assert (learner.depth().unread, learner.depth().pending) == (0, 6)

    assert learner.ack(delivered) == 6
    assert learner.ack(delivered) == 0
    assert learner.depth().total == 0
    assert learner.read("learner-0", count=10) == []
    assert learner.reclaim("learner-2", min_idle_ms=0) == []


def test_entries_of_a_dead_consumer_are_reclaimed(make_queue, run_id):
    producer, dead, survivor = make_queue(), make_queue(), make_queue()
    ids = [producer.append(make_group(run_id, f"p{i}")) for i in range(3)]
    taken = dead.read("learner-dead", count=2)  # then it dies without acknowledging

    [fresh] = survivor.read("learner-new", count=10)  # a read never redelivers
    assert fresh.id == ids[2] and survivor.ack([fresh.id]) == 1
    assert survivor.reclaim("learner-new", min_idle_ms=60_000) == []  # not idle long enough: maybe still working
    time.sleep(0.15)
    reclaimed = survivor.reclaim("learner-new", min_idle_ms=100)

    assert [(e.id, e.group) for e in reclaimed] == [(e.id, e.group) for e in taken]
    owners = survivor.redis.xpending(survivor.keys.rollouts, CONSUMER_GROUP)["consumers"]
    assert owners == [{"name": b"learner-new", "pending": 2}]
    assert survivor.ack(ids) == 2
    assert survivor.depth().total == 0


def test_reclaim_returns_at_most_count(make_queue, run_id):
    producer, learner = make_queue(), make_queue()
    for i in range(5):
        producer.append(make_group(run_id, f"p{i}"))
    learner.read("learner-dead", count=5)
    assert len(learner.reclaim("learner-new", min_idle_ms=0, count=3)) == 3
    assert len(learner.reclaim("learner-newer", min_idle_ms=0, count=10)) == 5


def _from_another_run(fields):
    return encode_group(make_group("some-other-run"))


WRONG_RUN = pytest.param(_from_another_run, "run_id: 'some-other-run' in the queue of run", id="wrong-run")


@pytest.mark.parametrize("corrupt, reason", [*MALFORMED, WRONG_RUN])
def test_malformed_entry_goes_to_the_dead_letter_stream(make_queue, run_id, corrupt, reason):
    producer, learner = make_queue(), make_queue()
    good_before = producer.append(make_group(run_id, "p0"))
    bad_fields = corrupt(encode_group(make_group(run_id, "p1")))
    bad = producer.redis.xadd(producer.keys.rollouts, bad_fields).decode()  # as a buggy producer would
    good_after = producer.append(make_group(run_id, "p2"))

    entries = learner.read("learner-0", count=10)

    assert [e.id for e in entries] == [good_before, good_after]
    [letter] = learner.dead_letters()
    assert reason in letter.reason
    assert (letter.source_id, letter.fields) == (bad, bad_fields)
    assert learner.dead_letter_count() == 1
    assert learner.depth().pending == 2  # the bad entry is acknowledged, not left pending
    assert learner.reclaim("learner-1", min_idle_ms=0) == entries  # the bad one is never redelivered


def test_dead_letter_count_accumulates_over_reads(make_queue, run_id):
    producer, learner = make_queue(), make_queue()
    for _ in range(2):
        producer.redis.xadd(producer.keys.rollouts, {b"schema": b"99", b"body": b"{}"})
        assert learner.read("learner-0") == []
    assert learner.dead_letter_count() == 2
    assert learner.depth().total == 0


def test_full_queue_blocks_the_producer_until_the_learner_acknowledges(make_queue, run_id):
    producer, learner = make_queue(max_depth=2, poll_interval_s=0.01), make_queue()
    producer.append(make_group(run_id, "p0"))
    producer.append(make_group(run_id, "p1"))

    thread, outcome = in_thread(producer.append, make_group(run_id, "p2"), 10.0)
    time.sleep(0.3)
    assert thread.is_alive() and learner.depth().total == 2

    [entry] = learner.read("learner-0")
    time.sleep(0.1)
    assert thread.is_alive()  # read but not yet applied: still counts
    learner.ack([entry.id])
    thread.join(5)

    assert not thread.is_alive() and "error" not in outcome
    assert [e.group.prompt_id for e in learner.read("learner-0", count=10)] == ["p1", "p2"]


def test_full_queue_times_out_with_a_clear_error_and_trims_nothing(make_queue, run_id):
    producer, learner = make_queue(max_depth=1, poll_interval_s=0.01), make_queue()
    first = producer.append(make_group(run_id, "p0"))
    learner.read("learner-0")

    start = time.monotonic()
    with pytest.raises(QueueFull, match="max_depth=1 unread or unacknowledged groups"):
        producer.append(make_group(run_id, "p1"), timeout_s=0.2)
    assert time.monotonic() - start >= 0.2

    assert learner.depth().total == 1
    assert [e.id for e in learner.reclaim("learner-1", min_idle_ms=0)] == [first]


def test_concurrent_producers_stay_within_the_bound_and_lose_nothing(make_queue, run_id):
    learner = make_queue()
    producers = [make_queue(max_depth=3, poll_interval_s=0.005, append_timeout_s=5) for _ in range(4)]
    threads = [
        in_thread(lambda p=p, n=n: [p.append(make_group(run_id, f"w{n}-{i}")) for i in range(5)])[0]
        for n, p in enumerate(producers)
    ]
    received, deadline = [], time.monotonic() + 10
    while len(received) < 20 and time.monotonic() < deadline:
        assert learner.depth().total <= 3
        entries = learner.read("learner-0", count=2, block_ms=1000)
        received += [e.group.prompt_id for e in entries]
        learner.ack([e.id for e in entries])
    for thread in threads:
        thread.join(5)
    assert sorted(received) == sorted(f"w{n}-{i}" for n in range(4) for i in range(5))
    for n in range(4):  # each producer's groups in the order it appended them
        assert [p for p in received if p.startswith(f"w{n}-")] == [f"w{n}-{i}" for i in range(5)]


def test_slots_are_reserved_once_each_across_workers(make_queue):
    workers = [make_queue() for _ in range(4)]
    threads = [
        in_thread(lambda n=n, w=w: [w.reserve_slot(f"w{n}", 100) for _ in range(25)]) for n, w in enumerate(workers)
    ]
    slots = []
    for thread, outcome in threads:
        thread.join(5)
        slots += outcome["result"]
    assert sorted(slots) == list(range(100))
    assert workers[0].reserve_slot("w0", 100) is None  # all leased
    assert workers[0].unfilled_slots(100) == 100


def test_a_slot_whose_lease_runs_out_goes_to_the_next_worker_lowest_first(make_queue, run_id):
    dead, alive = make_queue(slot_lease_s=0.3), make_queue(slot_lease_s=30)
    assert [dead.reserve_slot("dead", 10) for _ in range(3)] == [0, 1, 2]
    assert alive.reserve_slot("alive", 10) == 3  # the dead worker's leases still run
    time.sleep(0.4)
    assert [alive.reserve_slot("alive", 10) for _ in range(4)] == [0, 1, 2, 4]
    assert dead.renew_slots("dead", [0, 1, 2]) == 0  # a worker back from a stall cannot take them back
    assert dead.release_slots("dead", [0, 1, 2]) == 0


def test_a_renewed_lease_is_kept_and_a_released_one_is_reissued_at_once(make_queue):
    holder, other = make_queue(slot_lease_s=0.5), make_queue(slot_lease_s=30)
    assert [holder.reserve_slot("holder", 10) for _ in range(2)] == [0, 1]
    for _ in range(4):  # 0.8 s in all, beyond the 0.5 s lease
        time.sleep(0.2)
        assert holder.renew_slots("holder", [0, 1]) == 2
    assert other.reserve_slot("other", 10) == 2
    assert other.renew_slots("other", [0]) == 0  # not its slot: nothing renewed
    assert holder.release_slots("holder", [1]) == 1
    assert other.reserve_slot("other", 10) == 1
    assert holder.renew_slots("holder", [1]) == 0


def test_appending_a_group_ends_its_slots_lease_and_a_late_duplicate_still_arrives(make_queue, run_id):
    slow, fast, learner = make_queue(slot_lease_s=0.2), make_queue(slot_lease_s=30), make_queue()
    assert slow.reserve_slot("slow", 2) == 0
    assert fast.reserve_slot("fast", 2) == 1
    time.sleep(0.3)
    assert fast.reserve_slot("fast", 2) == 0  # slow's lease ran out
    fast.append(make_group(run_id, "p-fast", slot=0))
    fast.append(make_group(run_id, "p-fast", slot=1))
    assert fast.unfilled_slots(2) == 0
    assert fast.reserve_slot("fast", 2) is None
    slow.append(make_group(run_id, "p-slow", slot=0))  # the stalled worker's late group for the same slot
    assert [(e.group.slot, e.group.prompt_id) for e in learner.read("learner-0", count=10)] == [
        (0, "p-fast"),
        (1, "p-fast"),
        (0, "p-slow"),  # the learner drops it by slot (tests/trainer: the assembler)
    ]
    assert fast.unfilled_slots(2) == 0


def test_unfilled_slots_count_the_never_issued_and_the_leased(make_queue, run_id):
    queue = make_queue()
    assert queue.unfilled_slots(5) == 5
    assert queue.reserve_slot("w", 5) == 0
    assert queue.unfilled_slots(5) == 5
    queue.append(make_group(run_id, slot=0))
    assert queue.unfilled_slots(5) == 4


def test_policy_version_is_published_and_read(make_queue, run_id):
    learner, worker = make_queue(poll_interval_s=0.01), make_queue(poll_interval_s=0.01)
    assert worker.current_version() is None
    learner.publish_version(3)
    assert worker.current_version() == 3
    learner.publish_version(2)  # a learner resumed from an older checkpoint is the authority
    assert worker.current_version() == 2
    with pytest.raises(ValueError, match="negative"):
        learner.publish_version(-1)
    assert learner.redis.get(f"run:{run_id}:policy-version") == b"2"


def test_keys_live_under_the_run():
    keys = RunKeys("sweep-k2.seed_0")
    assert (keys.rollouts, keys.dead_letter, keys.policy_version) == (
        "run:sweep-k2.seed_0:rollouts",
        "run:sweep-k2.seed_0:dead-letter",
        "run:sweep-k2.seed_0:policy-version",
    )
    for bad in ("", "a:b", "has space", "-lead"):
        with pytest.raises(ValueError, match="run id"):
            RunKeys(bad)


def test_settings_take_redis_url_from_the_environment(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://cache.internal:6380/2")
    assert QueueSettings().redis_url == "redis://cache.internal:6380/2"
    with pytest.raises(ValidationError, match="max_lenght"):
        QueueSettings(max_lenght=3)


def test_a_hung_redis_fails_a_call_instead_of_hanging_it(redis_url):
    """SIGSTOP keeps the connection open and unanswered, as a half-open connection or a hung server does."""
    client = connect(redis_url, socket_timeout=1.0)
    pid = int(client.info("server")["process_id"])
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(redis_py.TimeoutError):
            client.get("anything")
        assert time.monotonic() - started < 5
    finally:
        os.kill(pid, signal.SIGCONT)
    assert client.ping()  # and the client works again once the server answers


def test_a_waiting_lane_trades_its_slot_for_a_lower_one_whose_lease_ran_out(make_queue):
    dead, alive = make_queue(slot_lease_s=0.2), make_queue(slot_lease_s=30)
    assert [dead.reserve_slot("dead", 10) for _ in range(2)] == [0, 1]
    assert alive.reserve_slot("alive", 10) == 2
    assert alive.reserve_expired_slot("alive", below=2) is None  # leases still running: nothing to take
    time.sleep(0.3)
    assert alive.reserve_expired_slot("alive", below=1) == 0  # only below the slot it holds
    assert alive.reserve_expired_slot("alive", below=2) == 1
    assert alive.reserve_expired_slot("alive", below=2) is None  # never a new slot
    assert alive.unfilled_slots(10) == 10


def test_reclaim_leaves_the_reclaimer_its_own_pending_entries(make_queue, run_id):
    """A learner reclaims while it waits: what it read itself stays as it is, only a stale consumer's comes over."""
    producer, learner = make_queue(), make_queue()
    ids = [producer.append(make_group(run_id, f"p{i}")) for i in range(3)]
    learner.read("learner-holder", count=1)
    stolen = learner.read("learner-stale", count=2)
    assert [e.id for e in learner.reclaim("learner-holder", min_idle_ms=0)] == [e.id for e in stolen] == ids[1:]
    assert learner.reclaim("learner-holder", min_idle_ms=0) == []
    owners = learner.redis.xpending(learner.keys.rollouts, CONSUMER_GROUP)["consumers"]
    assert owners == [{"name": b"learner-holder", "pending": 3}]


def test_a_push_asked_is_answered_once(make_queue):
    worker, learner = make_queue(), make_queue()
    assert learner.push_asked() is None
    worker.ask_for_push("http://gen:8000 serves default")
    assert learner.push_asked() == "http://gen:8000 serves default"
    assert learner.push_asked() is None
