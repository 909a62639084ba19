"""Runs over HTTP while a worker drives them through the registry: queued -> running -> an end, with reasons."""

import contextlib
import time

import httpx
import pytest

from cfpo.registry import LeaseLost, RunStateError
from tests.services.control.conftest import HEARTBEAT_TIMEOUT_S, control_api, spec


def submit(client: httpx.Client, **overrides) -> dict:
    response = client.post("/v1/runs", json=spec(**overrides))
    assert response.status_code == 201, response.text
    return response.json()


def wait_for_state(client: httpx.Client, run_id: str, state: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while (run := client.get(f"/v1/runs/{run_id}").json())["state"] != state:
        assert time.monotonic() < deadline, f"run {run_id} still {run['state']}, not {state}"
        time.sleep(0.1)
    return run


def test_a_run_goes_queued_running_succeeded_with_its_metrics(client, registry, worker):
    run = submit(client, name="lifecycle")
    assert (run["state"], run["name"], run["steps_done"], run["steps"]) == ("queued", "lifecycle", 0, 3)

    run_id, claimed_spec, lease = registry.claim_next(worker)
    assert run_id == run["id"] and claimed_spec.steps == 3
    assert registry.claim_next(worker + "-other") is None  # one worker per run
    with registry.heartbeating(run_id, lease, every_s=0.2) as beat:
        running = client.get(f"/v1/runs/{run_id}").json()
        assert (running["state"], running["worker"]) == ("running", worker)
        time.sleep(HEARTBEAT_TIMEOUT_S * 1.5)  # longer than the reaper's timeout: the heartbeats keep it running
        assert client.get(f"/v1/runs/{run_id}").json()["state"] == "running" and not beat.lost.is_set()
        for step in range(3):
            registry.record_step(
                run_id,
                lease,
                step,
                version=step + 1,
                metrics={"reward_mean": 0.1 * step, "kl_k3": 0.01, "staleness_mean": 0.5},
            )
        registry.finish(run_id, lease, "succeeded")

    done = client.get(f"/v1/runs/{run_id}").json()
    assert (done["state"], done["reason"], done["steps_done"], done["version"]) == ("succeeded", None, 3, 3)
    assert done["metrics"]["reward_mean"] == pytest.approx(0.2)
    assert done["staleness"] == {"mode": "bounded", "bound": 4, "latest_mean": 0.5}
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    history = client.get(f"/v1/runs/{run_id}/metrics").json()["steps"]
    assert [(h["step"], h["version"]) for h in history] == [(0, 1), (1, 2), (2, 3)]
    assert [h["step"] for h in client.get(f"/v1/runs/{run_id}/metrics", params={"since": 0}).json()["steps"]] == [1, 2]
    listed = client.get("/v1/runs", params={"state": "succeeded"}).json()["runs"]
    assert run_id in [r["id"] for r in listed]


def test_a_cancelled_queued_run_is_never_claimed(client, registry, worker):
    run = submit(client)
    response = client.post(f"/v1/runs/{run['id']}/cancel", json={"reason": "wrong learning rate"})
    assert response.status_code == 200
    assert (response.json()["state"], response.json()["reason"]) == ("cancelled", "wrong learning rate")
    assert registry.claim_next(worker) is None
    assert client.post(f"/v1/runs/{run['id']}/cancel").json()["state"] == "cancelled"  # a repeat changes nothing


def test_a_cancelled_running_run_is_flagged_until_its_worker_stops(client, registry, worker):
    run = submit(client)
    run_id, _, lease = registry.claim_next(worker)
    assert not registry.is_cancelled(run_id)
    flagged = client.post(f"/v1/runs/{run_id}/cancel", json={"reason": "enough"}).json()
    assert (flagged["state"], flagged["cancel_reason"]) == ("running", "enough")
    assert registry.is_cancelled(run_id)  # what the worker checks between steps
    registry.finish(run_id, lease, "cancelled")
    ended = client.get(f"/v1/runs/{run['id']}").json()
    assert (ended["state"], ended["reason"]) == ("cancelled", "enough")


def test_a_finished_run_cannot_be_cancelled(client, registry, worker):
    run = submit(client)
    registry.finish(run["id"], registry.claim_next(worker).lease, "failed", "out of memory")
    response = client.post(f"/v1/runs/{run['id']}/cancel")
    assert response.status_code == 409 and "already failed" in response.json()["detail"]
    assert client.get(f"/v1/runs/{run['id']}").json()["reason"] == "out of memory"


@pytest.mark.parametrize(
    "method, path", [("GET", "/v1/runs/{id}"), ("POST", "/v1/runs/{id}/cancel"), ("GET", "/v1/runs/{id}/metrics")]
)
@pytest.mark.parametrize("run_id", ["0123456789ab", "not:a:key", "%20"])
def test_unknown_runs_are_404(client, method, path, run_id):
    response = client.request(method, path.format(id=run_id))
    assert response.status_code == 404 and "no such run" in response.json()["detail"]


def test_a_run_whose_worker_dies_is_requeued_for_the_next_worker_then_fails_out_of_restarts(client, registry, worker):
    submit(client)
    first = registry.claim_next(worker)
    run_id, first_lease = first.run_id, first.lease
    registry.record_step(run_id, first_lease, 0, 1, {"reward_mean": 0.5})
    # ... and the worker is gone: no more heartbeats. The API's reaper puts the run back at the head of the queue.
    requeued = wait_for_state(client, run_id, "queued", timeout=HEARTBEAT_TIMEOUT_S + 5)
    assert f"no heartbeat from worker {worker}" in requeued["restart_reason"] and requeued["restarts"] == 1
    assert requeued["steps_done"] == 1 and requeued["finished_at"] is None
    with pytest.raises(LeaseLost):  # a worker that wakes up learns the run is not its own
        registry.heartbeat(run_id, first_lease)
    for restarts in (1, 2, 3):  # the next claims resume it, and die too
        claim = registry.claim_next(f"{worker}-{restarts}")
        assert (claim.run_id, claim.number) == (run_id, first.number + restarts)
        ended = wait_for_state(client, run_id, "queued" if restarts < 3 else "failed", HEARTBEAT_TIMEOUT_S + 5)
    assert f"no heartbeat from worker {worker}-3" in ended["reason"]
    assert "restarted 3 times already" in ended["reason"] and ended["finished_at"] is not None
    with pytest.raises(RunStateError, match="failed"):
        registry.record_step(run_id, claim.lease, 1, 2, {})
    reaped = client.get("/metrics").text
    assert 'cfpo_control_runs_reaped_total{outcome="requeued"}' in reaped
    assert 'cfpo_control_runs_reaped_total{outcome="failed"}' in reaped


def test_a_cancelled_run_whose_worker_dies_ends_cancelled(client, registry, worker):
    run = submit(client)
    registry.claim_next(worker)
    client.post(f"/v1/runs/{run['id']}/cancel", json={"reason": "stop"})
    ended = wait_for_state(client, run["id"], "cancelled", timeout=HEARTBEAT_TIMEOUT_S + 5)
    assert ended["reason"].startswith("stop; then no heartbeat from worker")


def test_restarting_the_api_loses_nothing(redis_url, tmp_path, registry, worker):
    with contextlib.ExitStack() as worker_alive:  # the worker heartbeats on while the API restarts
        with control_api(redis_url, tmp_path / "first.log") as first, first.client() as http:
            running = submit(http)
            run_id, _, lease = registry.claim_next(worker)
            worker_alive.enter_context(registry.heartbeating(run_id, lease, every_s=0.2))
            registry.record_step(run_id, lease, 0, 1, {"reward_mean": 1.0})
            queued = submit(http, name="survives")
        with control_api(redis_url, tmp_path / "second.log") as second, second.client() as http:
            assert http.get(f"/v1/runs/{queued['id']}").json() == queued
            after = http.get(f"/v1/runs/{running['id']}").json()
            assert (after["state"], after["steps_done"], after["metrics"]) == ("running", 1, {"reward_mean": 1.0})
            assert registry.claim_next(worker + "-2").run_id == queued["id"]  # still in the queue, in order
