"""A learner that comes back after losing its run changes nothing: SIGSTOPped while it holds a run, the reaper
requeues the run and a second learner worker resumes it from its checkpoint; SIGCONTed, the first learner finds its
claim gone. Every side effect of its claim is fenced (stream reads under its own consumer name, acknowledgements,
checkpoints and ``latest``, metrics rows, staged weights), so the run finishes with every slot applied once."""

import contextlib
import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from cfpo.queue import QueueSettings, RolloutQueue
from tests.e2e.conftest import TOY_SPEC
from tests.faults.conftest import counted

pytestmark = pytest.mark.slow
PROMPTS = TOY_SPEC["rollout"]["prompts_per_step"]


def test_a_paused_learner_that_comes_back_changes_nothing(worker_stack, tmp_path):
    steps = 14
    client, wait_for = worker_stack.client, worker_stack.wait_for
    run_id = client.post("/v1/runs", json=worker_stack.spec(steps=steps, checkpoint_every=4)).json()["id"]
    wait_for(run_id, lambda r: r["steps_done"] >= 5)
    paused, rollout = worker_stack.workers["learner"], worker_stack.workers["rollout"]
    with _paused(rollout):
        time.sleep(3)  # the learner trains what it has and waits for data
        paused.send_signal(signal.SIGSTOP)
    try:
        wait_for(run_id, lambda r: r["state"] == "queued", timeout=60)  # the reaper: no heartbeat for 6 s
        holder = worker_stack.start("learner")
        resumed = wait_for(run_id, lambda r: r["state"] == "running" and r["lease"] == 2)
        wait_for(run_id, lambda r: r["steps_done"] >= resumed["steps_done"] + 2)
        with _paused(holder):  # groups pile up unread for the paused learner to find when it wakes
            time.sleep(2)
            paused.send_signal(signal.SIGCONT)
            time.sleep(2)
    finally:
        paused.send_signal(signal.SIGCONT)

    done = wait_for(run_id, lambda r: r["state"] not in ("queued", "running"), timeout=300)
    assert (done["state"], done["steps_done"], done["lease"]) == ("succeeded", steps, 2), done
    assert paused.poll() is None  # it went back to waiting for runs
    assert "leaving it" in (tmp_path / "learner-0.log").read_text()
    run_dir = worker_stack.runs_dir / run_id
    history = client.get(f"/v1/runs/{run_id}/metrics").json()["steps"]
    assert [entry["step"] for entry in history] == list(range(steps))
    rows = Counter(json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    assert sorted(rows) == list(range(steps)) and len(set(rows.values())) == 1, rows  # no row of the paused one
    counts = counted(
        "learner SIGSTOP, run resumed elsewhere, SIGCONT",
        run_id,
        run_dir,
        sorted(tmp_path.glob("learner-*.log")),
        worker_stack.stack.redis_url,
        0,
    )
    assert counts.exactly_once(steps * PROMPTS)
    with RolloutQueue(run_id, QueueSettings(redis_url=worker_stack.stack.redis_url)) as queue:
        assert queue.depth().pending == 0  # everything applied was acknowledged by the holder


@contextlib.contextmanager
def _paused(process: subprocess.Popen) -> Iterator[None]:
    process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        process.send_signal(signal.SIGCONT)
