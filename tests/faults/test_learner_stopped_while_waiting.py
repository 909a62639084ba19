"""SIGTERM reaches a fixed-staleness learner while it waits before a push (generation may serve the next version only
once the older version's groups are in): the wait ends at once, and the learner stops without a checkpoint (it is
mid-step; the last checkpoint holds the run), instead of waiting out its data timeout and failing the run. Resumed,
it replays the steps since, and the run finishes with every slot applied once."""

import signal
import time

import pytest

from tests.e2e.conftest import TOY_SPEC, toy_spec_with
from tests.faults.conftest import counted

pytestmark = pytest.mark.slow
PROMPTS = TOY_SPEC["rollout"]["prompts_per_step"]


def test_sigterm_ends_a_fixed_staleness_wait_before_a_push(start_run):
    steps = 8
    run = start_run(toy_spec_with(steps=steps, checkpoint_every=2, staleness={"mode": "fixed", "k": 1}))
    run.start_learner()
    run.wait_for_steps(3)
    for worker in run.workers:
        worker.send_signal(signal.SIGSTOP)  # no more groups: with k = 1 the learner waits before its next push
    time.sleep(5)  # it trains the step in flight, if any, and waits
    run.learner.send_signal(signal.SIGTERM)
    try:
        assert run.learner.wait(30) == 128 + signal.SIGTERM, run.log_tail()  # the data timeout is 120 s
    finally:
        for worker in run.workers:
            worker.send_signal(signal.SIGCONT)
    assert "stops before version" in run.log_tail(1_000_000)

    run.start_learner("--resume")
    run.wait()
    logs = [run.directory.parent / f"{run.run_id}-learner.log"]
    counts = counted(
        "SIGTERM while waiting before a push, fixed k=1", run.run_id, run.directory, logs, run.stack.redis_url, 0
    )
    assert counts.exactly_once(steps * PROMPTS)
