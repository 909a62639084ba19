"""The worker side of the run registry on a real Redis: atomic claims, step history, heartbeats, finishing rules."""

import threading

import pytest

from cfpo.queue import CONSUMER_GROUP
from cfpo.registry import LeaseLost, RunNotFound, RunRegistry, RunStateError
from cfpo.run_spec import RunSpec

SPEC = RunSpec(model="/models/tiny", steps=5, learner={"loss": {"ratio_reference": "behaviour"}})


def test_each_queued_run_goes_to_exactly_one_of_many_claiming_workers(redis_url, registry):
    submitted = {registry.submit(SPEC).id for _ in range(5)}
    claims, start = [], threading.Barrier(8)

    def claim(worker: str) -> None:
        with RunRegistry(redis_url) as own:  # own connection, as a separate worker process has
            start.wait()
            while (claimed := own.claim_next(worker)) is not None:
                claims.append(claimed.run_id)

    threads = [threading.Thread(target=claim, args=(f"worker-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claims) == sorted(submitted)


def test_runs_are_claimed_oldest_first_with_their_spec(registry, worker):
    first, second = registry.submit(SPEC, name="first"), registry.submit(SPEC.model_copy(update={"seed": 7}))
    claim = registry.claim_next(worker)
    assert (claim.run_id, claim.spec, claim.number) == (first.id, SPEC, 1) and claim.lease.startswith("1-")
    assert registry.claim_next(worker).spec.seed == 7 and registry.get(second.id).state == "running"


def test_the_history_is_capped_and_the_latest_step_kept(redis_url, worker):
    with RunRegistry(redis_url, history_length=3) as registry:
        run_id = registry.submit(SPEC).id
        lease = registry.claim_next(worker).lease
        for step in range(5):
            registry.record_step(run_id, lease, step, step + 1, {"loss": 1.0 / (step + 1)})
        assert [entry.step for entry in registry.history(run_id)] == [2, 3, 4]
        record = registry.get(run_id)
        assert (record.steps_done, record.version, record.metrics) == (5, 5, {"loss": 0.2})


def test_metrics_json_cannot_hold_are_kept_readable(registry, worker):
    class Scalar:  # what numpy and torch scalars look like to the registry: float() works
        def __float__(self) -> float:
            return 0.25

    run_id = registry.submit(SPEC).id
    lease = registry.claim_next(worker).lease
    registry.record_step(
        run_id,
        lease,
        0,
        1,
        {
            "loss": float("nan"),
            "ratio_max": float("inf"),
            "lr": Scalar(),
            "by_bucket": {0: -float("inf")},
            "warm_up": True,
        },
    )
    assert registry.get(run_id).metrics == {
        "loss": "nan",
        "ratio_max": "inf",
        "lr": 0.25,
        "by_bucket": {"0": "-inf"},
        "warm_up": True,
    }


def test_a_heartbeat_thread_notices_when_the_run_is_no_longer_its_own(registry, worker):
    run_id = registry.submit(SPEC).id
    lease = registry.claim_next(worker).lease
    with registry.heartbeating(run_id, lease, every_s=0.05) as beat:
        registry.finish(run_id, lease, "succeeded")
        assert beat.lost.wait(2) and "succeeded" in beat.reason


def test_only_the_current_lease_heartbeats_and_only_running_runs_finish(registry, worker):
    run_id = registry.submit(SPEC).id
    with pytest.raises(LeaseLost, match="queue"):
        registry.finish(run_id, "1-x", "succeeded")
    lease = registry.claim_next(worker).lease
    with pytest.raises(LeaseLost, match="stale lease 1-x: the run was taken over \\(lease 1\\)"):
        registry.heartbeat(run_id, "1-x")
    with pytest.raises(ValueError, match="state"):
        registry.finish(run_id, lease, "running")
    registry.finish(run_id, lease, "failed", "diverged")
    with pytest.raises(RunStateError, match="failed"):
        registry.finish(run_id, lease, "succeeded")
    assert registry.get(run_id).reason == "diverged"


def test_a_run_handed_back_is_claimed_next_under_a_new_lease_and_fences_the_old_one(registry, worker):
    handed_back, waiting = registry.submit(SPEC).id, registry.submit(SPEC).id
    first = registry.claim_next(worker)
    old = first.lease
    for step in range(3):
        registry.record_step(handed_back, old, step, step + 1, {"loss": 1.0})
    registry.release(handed_back, old, "learner stopped (SIGTERM)")
    record = registry.get(handed_back)
    assert (record.state, record.restarts, record.restart_reason) == ("queued", 1, "learner stopped (SIGTERM)")

    claim = registry.claim_next(worker + "-new")
    assert (claim.run_id, claim.number) == (handed_back, first.number + 1)  # ahead of the run queued before it
    registry.rewind(handed_back, claim.lease, 2)  # its checkpoint holds steps 0-1: step 2 is trained again
    registry.record_step(handed_back, claim.lease, 2, 3, {"loss": 0.5})
    assert [(e.step, e.metrics["loss"]) for e in registry.history(handed_back)] == [(0, 1.0), (1, 1.0), (2, 0.5)]
    assert registry.get(handed_back).steps_done == 3
    for stale_write in (
        lambda: registry.heartbeat(handed_back, old),
        lambda: registry.record_step(handed_back, old, 3, 4, {}),
        lambda: registry.release(handed_back, old, "again"),
        lambda: registry.finish(handed_back, old, "succeeded"),
        lambda: registry.acknowledge(handed_back, old, ["1-0"]),
    ):
        with pytest.raises(LeaseLost, match="stale lease"):
            stale_write()
    assert registry.get(handed_back).state == "running" and registry.get(waiting).state == "queued"
    registry.finish(handed_back, claim.lease, "succeeded")
    registry.cancel(waiting)


def test_unknown_runs_raise_not_found(registry):
    for call in (
        lambda: registry.get("nope"),
        lambda: registry.is_cancelled("nope"),
        lambda: registry.heartbeat("bad:id", 1),
        lambda: registry.history("nope"),
    ):
        with pytest.raises(RunNotFound):
            call()


def test_queued_and_running_hold_those_runs_and_no_ended_one(registry, worker):
    succeeded, failed, running, cancelled, queued = (registry.submit(SPEC).id for _ in range(5))
    registry.finish(succeeded, registry.claim_next(worker).lease, "succeeded")
    registry.finish(failed, registry.claim_next(worker).lease, "failed", "diverged")
    lease = registry.claim_next(worker).lease
    registry.cancel(cancelled)
    with registry.heartbeating(running, lease, every_s=0.1):  # the session's API reaps a run silent for 1 s
        assert {run.id: run.state for run in registry.queued_and_running()} == {running: "running", queued: "queued"}
        assert [run.id for run in registry.running()] == [running]  # what rollout workers poll


def test_a_claim_redis_forgot_is_never_handed_out_again_as_the_same_token(registry, worker):
    """Redis with ``appendfsync everysec`` may lose its last second of writes, a claim among them. A kill -9 cannot
    be timed into that second, so the test writes back what Redis would remember: the run queued, its counter one
    lower. The next claim gets the same number, and still a token of its own that fences the forgotten one."""
    run_id = registry.submit(SPEC).id
    forgotten = registry.claim_next(worker)
    record = f"run:{run_id}:record"
    registry.redis.hset(record, mapping={"state": "queued", "lease": 0})
    registry.redis.hdel(record, "token")
    registry.redis.zrem("runs:active", run_id)
    registry.redis.lpush("runs:queued", run_id)
    again = registry.claim_next(worker + "-new")
    assert (again.run_id, again.number) == (run_id, forgotten.number) and again.lease != forgotten.lease
    with pytest.raises(LeaseLost, match="stale lease"):
        registry.record_step(run_id, forgotten.lease, 0, 1, {})
    registry.record_step(run_id, again.lease, 0, 1, {})


def test_entries_are_acknowledged_and_deleted_only_under_the_current_claim(registry, worker):
    run_id = registry.submit(SPEC).id
    stream = f"run:{run_id}:rollouts"
    registry.redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
    ids = [registry.redis.xadd(stream, {"n": n}).decode() for n in range(3)]
    registry.redis.xreadgroup(CONSUMER_GROUP, "learner-a", {stream: ">"})
    stale = registry.claim_next(worker).lease
    registry.release(run_id, stale, "handed back")
    holder = registry.claim_next(worker).lease
    with pytest.raises(LeaseLost, match="stale lease"):
        registry.acknowledge(run_id, stale, ids)
    assert registry.redis.xlen(stream) == 3 and registry.redis.xpending(stream, CONSUMER_GROUP)["pending"] == 3
    registry.acknowledge(run_id, holder, ids[:2])
    assert registry.redis.xlen(stream) == 1 and registry.redis.xpending(stream, CONSUMER_GROUP)["pending"] == 1
