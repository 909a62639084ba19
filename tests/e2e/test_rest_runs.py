"""Runs started through the REST API and carried out by the learner and rollout workers in worker mode."""

import pytest

pytestmark = pytest.mark.slow


def test_runs_through_the_api_succeed_and_cancel(worker_stack):
    client = worker_stack.client
    assert client.post("/v1/runs", json=worker_stack.spec(model="/no/such/model")).status_code == 409

    created = client.post("/v1/runs", json=worker_stack.spec(steps=6))
    assert created.status_code == 201, created.text
    run = worker_stack.wait_for(created.json()["id"], lambda r: r["state"] not in ("queued", "running"))
    assert (run["state"], run["steps_done"], run["version"]) == ("succeeded", 6, 6), run
    assert {"reward_mean", "behaviour_clip_frac", "proximal_kl_k3"} <= run["metrics"].keys()
    history = client.get(f"/v1/runs/{run['id']}/metrics").json()
    assert [entry["step"] for entry in history["steps"]] == list(range(6))

    long_run = client.post("/v1/runs", json=worker_stack.spec(steps=200)).json()["id"]
    worker_stack.wait_for(long_run, lambda r: r["steps_done"] >= 2)
    assert client.post(f"/v1/runs/{long_run}/cancel").status_code == 200
    cancelled = worker_stack.wait_for(long_run, lambda r: r["state"] != "running", timeout=60)
    assert cancelled["state"] == "cancelled" and cancelled["steps_done"] < 200
