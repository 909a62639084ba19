"""Entries delivered again with their own stream ids: Redis under ``appendfsync everysec`` can lose its last second
of writes, the consumer group's last-delivered id among them, and then hands the learner entries it already holds
(applied, waiting for the next checkpoint). A kill -9 cannot be timed into that second, so the scenario moves the
group's last-delivered id back as such a crash does. The learner keeps what it holds: killed before its next
checkpoint and resumed, it replays every step since, and the run finishes with every slot applied once."""

import pytest
import redis

from cfpo.queue import CONSUMER_GROUP
from tests.e2e.conftest import TOY_SPEC, toy_spec_with
from tests.faults.conftest import counted

pytestmark = pytest.mark.slow
PROMPTS = TOY_SPEC["rollout"]["prompts_per_step"]


def test_entries_delivered_again_are_kept_until_a_checkpoint_holds_them(start_run):
    steps, every = 14, 7
    run = start_run(toy_spec_with(steps=steps, checkpoint_every=every))
    run.start_learner()
    run.wait_for_steps(every + 2)  # a checkpoint at 7, and the entries of the steps since held, not acknowledged
    with redis.Redis.from_url(run.stack.redis_url) as admin:
        admin.xgroup_setid(f"run:{run.run_id}:rollouts", CONSUMER_GROUP, "0")
    run.wait_for_steps(every + 4)  # it read them all again meanwhile
    assert len({row["step"] for row in run.metrics()}) < steps, "the run ended before the kill"
    run.kill_learner()

    run.start_learner("--resume")
    run.wait()
    assert f"starting at step {every}, version {every} (" in run.log_tail(1_000_000)
    logs = [run.directory.parent / f"{run.run_id}-learner.log"]
    counts = counted("entries delivered again, then kill -9", run.run_id, run.directory, logs, run.stack.redis_url, 0)
    assert counts.exactly_once(steps * PROMPTS)
