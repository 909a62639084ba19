"""Runs started through the REST API and carried out by the learner and rollout workers in worker mode."""

import json
import re
import signal
import subprocess
import time
from pathlib import Path

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
    started: list[subprocess.Popen] = []

    def start(name: str) -> subprocess.Popen:
        """A learner or rollout worker, as the chart runs it (several learners share one runs directory)."""
        argv = {
            "learner": python_module("trainer", "--worker", "--runs-dir", str(tmp_path / "runs")),
            "rollout": python_module("services.rollout", "--worker"),
        }[name]
        log = (tmp_path / f"{name}-{len(started)}.log").open("wb")
        started.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env))
        return started[-1]

    with running(control, f"{url}/health", log=tmp_path / "control.log", env=env):
        workers = {"learner": start("learner"), "rollout": start("rollout")}
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
            yield client, workers, start
        for process in started:
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


def _resumed_at(log: Path) -> int:
    [step] = re.findall(r"starting at step (\d+),", log.read_text())
    return int(step)


def test_runs_through_the_api_succeed_and_cancel(stack, api):
    client, _, _ = api
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


def test_a_run_survives_its_learner_stopped_then_killed(stack, api, tmp_path):
    """SIGTERM: the learner checkpoints and hands the run back at once. SIGKILL: the reaper requeues it after the
    heartbeat timeout. Each time a new learner worker resumes it from its checkpoint (the reliability review's D4)."""
    client, workers, start = api
    steps = 16
    run_id = client.post("/v1/runs", json=_spec(stack, steps=steps, checkpoint_every=4)).json()["id"]
    _wait_for(client, run_id, lambda r: r["steps_done"] >= 5)

    workers["learner"].send_signal(signal.SIGTERM)
    assert workers["learner"].wait(60) == 0  # at the step boundary, with a checkpoint
    handed_back = client.get(f"/v1/runs/{run_id}").json()
    assert handed_back["state"] == "queued" and "SIGTERM" in handed_back["restart_reason"], handed_back
    stopped_at = handed_back["steps_done"]

    second = start("learner")
    _wait_for(client, run_id, lambda r: r["state"] == "running" and r["lease"] == 2)
    assert client.get(f"/v1/runs/{run_id}").json()["steps_done"] >= stopped_at  # not started over
    _wait_for(client, run_id, lambda r: r["steps_done"] >= stopped_at + 4)
    second.send_signal(signal.SIGKILL)
    requeued = _wait_for(client, run_id, lambda r: r["state"] == "queued", timeout=60)
    assert "no heartbeat" in requeued["restart_reason"] and requeued["restarts"] == 2, requeued

    third = start("learner")
    done = _wait_for(client, run_id, lambda r: r["state"] not in ("queued", "running"), timeout=300)
    starts = [_resumed_at(tmp_path / f"learner-{n}.log") for n in (2, 3)]  # the logs of second and third
    assert starts[0] == stopped_at, starts  # the SIGTERM's checkpoint
    assert starts[1] > stopped_at and starts[1] % 4 == 0, starts  # the last periodic checkpoint before the kill
    assert third.poll() is None
    assert (done["state"], done["steps_done"], done["lease"]) == ("succeeded", steps, 3), done
    history = client.get(f"/v1/runs/{run_id}/metrics").json()["steps"]
    assert [entry["step"] for entry in history] == list(range(steps))  # replayed steps recorded once
    applied = [json.loads(line) for line in (tmp_path / "runs" / run_id / "applied.jsonl").read_text().splitlines()]
    assert [row["step"] for row in applied] == list(range(steps))
    prompts = TOY_SPEC["rollout"]["prompts_per_step"]
    assert sorted(slot for row in applied for slot in row["slots"]) == list(range(steps * prompts))
