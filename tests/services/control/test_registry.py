"""The worker side of the run registry on a real Redis: atomic claims, step history, heartbeats, finishing rules."""

import threading

import pytest

from cfpo.registry import RunNotFound, RunRegistry, RunStateError
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
    assert registry.claim_next(worker) == (first.id, SPEC)
    assert registry.claim_next(worker).spec.seed == 7 and registry.get(second.id).state == "running"


def test_the_history_is_capped_and_the_latest_step_kept(redis_url, worker):
    with RunRegistry(redis_url, history_length=3) as registry:
        run_id = registry.submit(SPEC).id
        registry.claim_next(worker)
        for step in range(5):
            registry.record_step(run_id, step, step + 1, {"loss": 1.0 / (step + 1)})
        assert [entry.step for entry in registry.history(run_id)] == [2, 3, 4]
        record = registry.get(run_id)
        assert (record.steps_done, record.version, record.metrics) == (5, 5, {"loss": 0.2})


def test_metrics_json_cannot_hold_are_kept_readable(registry, worker):
    class Scalar:  # what numpy and torch scalars look like to the registry: float() works
        def __float__(self) -> float:
            return 0.25

    run_id = registry.submit(SPEC).id
    registry.claim_next(worker)
    registry.record_step(
        run_id,
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
    registry.claim_next(worker)
    with registry.heartbeating(run_id, worker, every_s=0.05) as beat:
        registry.finish(run_id, "succeeded")
        assert beat.lost.wait(2) and "succeeded" in beat.reason


def test_only_the_claiming_worker_heartbeats_and_only_running_runs_finish(registry, worker):
    run_id = registry.submit(SPEC).id
    with pytest.raises(RunStateError, match="queued"):
        registry.finish(run_id, "succeeded")
    registry.claim_next(worker)
    with pytest.raises(RunStateError, match=f"held by worker {worker}, not someone-else"):
        registry.heartbeat(run_id, "someone-else")
    with pytest.raises(ValueError, match="state"):
        registry.finish(run_id, "running")
    registry.finish(run_id, "failed", "diverged")
    with pytest.raises(RunStateError, match="failed"):
        registry.finish(run_id, "succeeded")
    assert registry.get(run_id).reason == "diverged"


def test_unknown_runs_raise_not_found(registry):
    for call in (
        lambda: registry.get("nope"),
        lambda: registry.is_cancelled("nope"),
        lambda: registry.heartbeat("bad:id", "w"),
        lambda: registry.history("nope"),
    ):
        with pytest.raises(RunNotFound):
            call()
