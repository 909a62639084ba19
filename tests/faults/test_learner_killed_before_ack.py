"""The learner killed (kill -9) between a checkpoint and its acknowledgements: the checkpoint holds the effect of
entries the stream still counts as pending. Redis is stopped (SIGSTOP) as soon as the checkpoint's folder appears
(the step is recorded by then), so the checkpoint is written and the acknowledgement that follows waits; the
learner dies there. The next learner
worker resumes from that checkpoint, acknowledges what it holds without applying it again, and the run finishes
with every slot applied once."""

import dataclasses
import json
import os
import signal
import time

import pytest

from cfpo.queue import CONSUMER_GROUP, QueueSettings, RolloutQueue
from tests.e2e.conftest import TOY_SPEC, workers_on
from tests.faults.conftest import counted

pytestmark = pytest.mark.slow
PROMPTS = TOY_SPEC["rollout"]["prompts_per_step"]


def _applied(run_dir) -> list[dict]:
    path = run_dir / "applied.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _until(condition, timeout: float, poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll)


def test_a_learner_killed_between_checkpoint_and_ack_loses_and_repeats_nothing(stack, own_redis, tmp_path):
    steps, every = 12, 4
    with workers_on(dataclasses.replace(stack, redis_url=own_redis.url), tmp_path) as workers:
        spec = workers.spec(steps=steps, checkpoint_every=every)
        run_id = workers.client.post("/v1/runs", json=spec).json()["id"]
        run_dir = workers.runs_dir / run_id
        checkpoint = run_dir / "checkpoints" / f"version-{every}"
        _until(checkpoint.exists, timeout=180, poll=0.001)
        os.kill(own_redis.process.pid, signal.SIGSTOP)  # the checkpoint is being written: next comes the ack
        try:
            latest = run_dir / "checkpoints" / "latest"
            _until(lambda: latest.exists() and latest.read_text().strip() == f"version-{every}", timeout=60)
            time.sleep(1.0)  # the acknowledgement is sent, and waits for Redis
            workers.workers["learner"].send_signal(signal.SIGKILL)
            workers.workers["learner"].wait(30)
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        checkpointed = {entry for row in _applied(run_dir) if row["step"] < every for entry in row["ids"]}
        with RolloutQueue(run_id, QueueSettings(redis_url=own_redis.url)) as queue:
            pending = queue.redis.xpending_range(queue.keys.rollouts, CONSUMER_GROUP, "-", "+", 10_000)
        assert checkpointed <= {entry["message_id"].decode() for entry in pending}  # held, never acknowledged

        workers.start("learner")  # the reaper requeues the silent run; this worker resumes it
        done = workers.wait_for(run_id, lambda r: r["state"] not in ("queued", "running"), timeout=300)
        assert (done["state"], done["steps_done"]) == ("succeeded", steps), done
        resumed = (tmp_path / "learner-2.log").read_text()
        assert f"starting at step {every}," in resumed, resumed[-3000:]
        logs = sorted(tmp_path.glob("learner-*.log"))
        counts = counted("learner kill -9 between checkpoint and ack", run_id, run_dir, logs, own_redis.url, 0)
        assert counts.exactly_once(steps * PROMPTS)
        with RolloutQueue(run_id, QueueSettings(redis_url=own_redis.url)) as queue:
            assert queue.depth().pending == 0  # everything applied was acknowledged in the end
