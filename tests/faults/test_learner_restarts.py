"""A learner that stops or dies loses no run: SIGTERM checkpoints and hands it back, kill -9 leaves it to the
reaper, and another learner worker resumes it from its checkpoint (the reliability review's D4)."""

import json
import re
import signal
from pathlib import Path

import pytest

from tests.e2e.conftest import TOY_SPEC
from tests.faults.conftest import counted

pytestmark = pytest.mark.slow
PROMPTS = TOY_SPEC["rollout"]["prompts_per_step"]


def _redis_url(worker_stack) -> str:
    return worker_stack.stack.redis_url


def _resumed_at(log: Path) -> int:
    [step] = re.findall(r"starting at step (\d+),", log.read_text())
    return int(step)


def test_a_run_survives_its_learner_stopped_then_killed(worker_stack, tmp_path):
    """SIGTERM: the learner checkpoints and hands the run back at once. SIGKILL: the reaper requeues it after the
    heartbeat timeout. Each time a new learner worker resumes it from its checkpoint (the reliability review's D4)."""
    client, workers, start, wait_for = (
        worker_stack.client,
        worker_stack.workers,
        worker_stack.start,
        worker_stack.wait_for,
    )
    steps = 16
    run_id = client.post("/v1/runs", json=worker_stack.spec(steps=steps, checkpoint_every=4)).json()["id"]
    wait_for(run_id, lambda r: r["steps_done"] >= 5)

    workers["learner"].send_signal(signal.SIGTERM)
    assert workers["learner"].wait(60) == 0  # at the step boundary, with a checkpoint
    handed_back = client.get(f"/v1/runs/{run_id}").json()
    assert handed_back["state"] == "queued" and "SIGTERM" in handed_back["restart_reason"], handed_back
    stopped_at = handed_back["steps_done"]

    second = start("learner")
    wait_for(run_id, lambda r: r["state"] == "running" and r["lease"] == 2)
    assert client.get(f"/v1/runs/{run_id}").json()["steps_done"] >= stopped_at  # not started over
    wait_for(run_id, lambda r: r["steps_done"] >= stopped_at + 4)
    second.send_signal(signal.SIGKILL)
    requeued = wait_for(run_id, lambda r: r["state"] == "queued", timeout=60)
    assert "no heartbeat" in requeued["restart_reason"] and requeued["restarts"] == 2, requeued

    third = start("learner")
    done = wait_for(run_id, lambda r: r["state"] not in ("queued", "running"), timeout=300)
    starts = [_resumed_at(tmp_path / f"learner-{n}.log") for n in (2, 3)]  # the logs of second and third
    assert starts[0] == stopped_at, starts  # the SIGTERM's checkpoint
    assert starts[1] > stopped_at and starts[1] % 4 == 0, starts  # the last periodic checkpoint before the kill
    assert third.poll() is None
    assert (done["state"], done["steps_done"], done["lease"]) == ("succeeded", steps, 3), done
    history = client.get(f"/v1/runs/{run_id}/metrics").json()["steps"]
    assert [entry["step"] for entry in history] == list(range(steps))  # replayed steps recorded once
    applied = [json.loads(line) for line in (worker_stack.runs_dir / run_id / "applied.jsonl").read_text().splitlines()]
    assert [row["step"] for row in applied] == list(range(steps))
    logs = sorted(tmp_path.glob("learner-*.log"))
    counts = counted(
        "learner SIGTERM, then kill -9", run_id, worker_stack.runs_dir / run_id, logs, _redis_url(worker_stack), 0
    )
    assert counts.exactly_once(steps * PROMPTS)


def test_two_learner_workers_on_one_run_one_takes_it_the_other_takes_over(worker_stack, tmp_path):
    """Two learner workers poll the same registry: exactly one claims the run; killed, the other resumes it."""
    spare = worker_stack.start("learner")
    steps = 10
    run_id = worker_stack.client.post("/v1/runs", json=worker_stack.spec(steps=steps, checkpoint_every=3)).json()["id"]
    worker_stack.wait_for(run_id, lambda r: r["steps_done"] >= 4)
    first, second = worker_stack.workers["learner"], spare
    logs = {first: tmp_path / "learner-0.log", second: tmp_path / "learner-2.log"}
    holders = [p for p, log in logs.items() if f"claimed run {run_id}" in log.read_text()]
    assert len(holders) == 1, "exactly one learner claims the run"
    [holder] = holders
    other = second if holder is first else first
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)

    done = worker_stack.wait_for(run_id, lambda r: r["state"] not in ("queued", "running"), timeout=300)
    assert (done["state"], done["lease"], done["restarts"]) == ("succeeded", 2, 1), done
    assert f"claimed run {run_id} (lease 2)" in logs[other].read_text()
    history = worker_stack.client.get(f"/v1/runs/{run_id}/metrics").json()["steps"]
    assert [entry["step"] for entry in history] == list(range(steps))
    counts = counted(
        "two learners, the holder kill -9",
        run_id,
        worker_stack.runs_dir / run_id,
        list(logs.values()),
        _redis_url(worker_stack),
        0,
    )
    assert counts.exactly_once(steps * PROMPTS)
