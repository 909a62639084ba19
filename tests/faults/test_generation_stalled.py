"""A generation server that stalls (SIGSTOP, longer than a request's timeout) and comes back: the calls in flight
time out and are retried (the rollout workers' requests, the learner's weight push), and the run finishes with
every slot once."""

import os
import signal
import time

import pytest

from tests.e2e.conftest import TOY_SPEC
from tests.faults.conftest import counted

pytestmark = pytest.mark.slow
STALL_S, REQUEST_TIMEOUT_S = 8.0, 3.0


def test_a_stalled_generation_server_delays_the_run_and_loses_nothing(worker_stack, tmp_path):
    steps = 8
    rollout = {**TOY_SPEC["rollout"], "request_timeout": REQUEST_TIMEOUT_S}
    run_id = worker_stack.client.post("/v1/runs", json=worker_stack.spec(steps=steps, rollout=rollout)).json()["id"]
    worker_stack.wait_for(run_id, lambda r: r["steps_done"] >= 2)
    group = os.getpgid(worker_stack.stack.generation_pid)  # vLLM's API server, engine and workers
    os.killpg(group, signal.SIGSTOP)
    try:
        time.sleep(STALL_S)
    finally:
        os.killpg(group, signal.SIGCONT)

    done = worker_stack.wait_for(run_id, lambda r: r["state"] not in ("queued", "running"), timeout=300)
    assert done["state"] == "succeeded", done
    # The stall was felt: generation's callers (the learner's push, the workers' polls and requests, which time
    # out and are retried when one is in flight) waited it out, so two recorded steps lie at least that far apart.
    times = [entry["time"] for entry in worker_stack.client.get(f"/v1/runs/{run_id}/metrics").json()["steps"]]
    assert max(later - earlier for earlier, later in zip(times, times[1:])) >= STALL_S - 1
    logs = sorted(tmp_path.glob("learner-*.log"))
    counts = counted(
        "generation SIGSTOP 8 s", run_id, worker_stack.runs_dir / run_id, logs, worker_stack.stack.redis_url, 0
    )
    assert counts.exactly_once(steps * TOY_SPEC["rollout"]["prompts_per_step"])
