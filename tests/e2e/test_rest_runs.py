"""Runs started through the REST API and carried out by the learner and rollout workers in worker mode."""

import signal
import subprocess
import time

import httpx
import pytest

from tests.e2e.conftest import TOY_SPEC, _env
from tests.servers import free_port, python_module, running, stop

pytestmark = pytest.mark.slow
TOKEN = "e2e-token"


@pytest.fixture
def api(stack, tmp_path):
    """Control API (model check against the real generation service) and one learner and one rollout worker."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**_env(stack), "CFPO_API_TOKEN": TOKEN}
    control = python_module(
        "services.control",
        "--port",
        str(port),
        "--generation-url",
        stack.generation_url,
        "--heartbeat-timeout-s",
        "6",
        "--reap-interval-s",
        "1",
    )
    with running(control, f"{url}/health", log=tmp_path / "control.log", env=env):
        workers = {
            name: subprocess.Popen(
                argv,
                stdout=(tmp_path / f"{name}.log").open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
            for name, argv in (
                ("learner", python_module("trainer", "--worker", "--runs-dir", str(tmp_path / "runs"))),
                ("rollout", python_module("services.rollout", "--worker")),
            )
        }
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
            yield client, workers
        for process in workers.values():
            stop(process, grace=15)


def _spec(stack, **changes):
    return {**TOY_SPEC, "model": str(stack.model_dir), **changes}


def _wait_for(client, run_id, done, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/v1/runs/{run_id}").json()
        if done(run):
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} still {run['state']} at step {run['steps_done']} after {timeout} s")


def test_runs_through_the_api_succeed_cancel_and_fail_when_the_learner_dies(stack, api):
    client, workers = api
    assert client.post("/v1/runs", json=_spec(stack, model="/no/such/model")).status_code == 409

    created = client.post("/v1/runs", json=_spec(stack, steps=6))
    assert created.status_code == 201, created.text
    run = _wait_for(client, created.json()["id"], lambda r: r["state"] not in ("queued", "running"))
    assert (run["state"], run["steps_done"], run["version"]) == ("succeeded", 6, 6), run
    assert {"reward_mean", "behaviour_clip_frac", "proximal_kl_k3"} <= run["metrics"].keys()
    history = client.get(f"/v1/runs/{run['id']}/metrics").json()
    assert [entry["step"] for entry in history["steps"]] == list(range(6))

    long_run = client.post("/v1/runs", json=_spec(stack, steps=200)).json()["id"]
    _wait_for(client, long_run, lambda r: r["steps_done"] >= 2)
    assert client.post(f"/v1/runs/{long_run}/cancel").status_code == 200
    cancelled = _wait_for(client, long_run, lambda r: r["state"] != "running", timeout=60)
    assert cancelled["state"] == "cancelled" and cancelled["steps_done"] < 200

    doomed = client.post("/v1/runs", json=_spec(stack, steps=200)).json()["id"]
    _wait_for(client, doomed, lambda r: r["steps_done"] >= 1)
    workers["learner"].send_signal(signal.SIGKILL)
    failed = _wait_for(client, doomed, lambda r: r["state"] != "running", timeout=60)
    assert failed["state"] == "failed" and "heartbeat" in failed["reason"], failed
