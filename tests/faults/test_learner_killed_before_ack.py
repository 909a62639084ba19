"""The learner dying between a checkpoint and its acknowledgements: the checkpoint holds the effect of entries the
stream still counts as pending. A kill -9 cannot be timed to those few milliseconds, so Redis refuses the
learner's acknowledgement (an ACL without XACK): the learner dies right there, leaving exactly what a kill there
leaves. Resumed, it acknowledges what its checkpoint holds without applying it again, replays the rest, and the run
finishes with every slot applied once."""

import pytest
import redis

from cfpo.queue import CONSUMER_GROUP
from tests.e2e.conftest import TOY_SPEC, toy_spec_with
from tests.faults.conftest import counted

pytestmark = pytest.mark.slow
PROMPTS = TOY_SPEC["rollout"]["prompts_per_step"]


def test_a_learner_dying_between_checkpoint_and_ack_loses_and_repeats_nothing(start_run, own_redis):
    steps, every = 8, 4
    with redis.Redis.from_url(own_redis.url) as admin:
        admin.execute_command("ACL", "SETUSER", "default", "-xack")  # the first acknowledgement follows a checkpoint
        run = start_run(toy_spec_with(steps=steps, checkpoint_every=every), redis=own_redis.url)
        run.start_learner()
        assert run.learner.wait(240) != 0
        assert "no permissions to run the 'xack' command" in run.log_tail(), run.log_tail()
        assert (run.directory / "checkpoints" / "latest").read_text().startswith(f"version-{every}-")
        held = {entry for row in run.applied() if row["step"] < every for entry in row["ids"]}
        with run.queue() as queue:
            listed = admin.xpending_range(queue.keys.rollouts, CONSUMER_GROUP, "-", "+", 10_000)
        pending = {entry["message_id"].decode() for entry in listed}
        assert held and held <= pending  # in the checkpoint, never acknowledged
        admin.execute_command("ACL", "SETUSER", "default", "+xack")

    run.start_learner("--resume")
    run.wait()
    assert f"starting at step {every}, version {every} (" in run.log_tail(100_000)
    logs = [run.directory.parent / f"{run.run_id}-learner.log"]
    counts = counted("learner dying between checkpoint and ack", run.run_id, run.directory, logs, own_redis.url, 0)
    assert counts.exactly_once(steps * PROMPTS)
    with run.queue() as queue:
        assert queue.depth().pending == 0  # everything applied was acknowledged in the end
