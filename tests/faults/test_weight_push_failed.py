"""A weight push failing half-way: generation loaded the new weights but its reply was lost, once after the load
and once after the version label. The learner sees a failed update and pushes again (a failed update is safe to
repeat: the same file, the same label), the rollout workers go on meanwhile, and the run ends on its final policy
with every slot applied once."""

import pytest

from cfpo.clients.generation import GenerationClient, PolicyVersion
from tests.e2e.conftest import TOY_SPEC, toy_spec_with
from tests.e2e.generation_proxy import GenerationProxy
from tests.faults.conftest import counted

pytestmark = pytest.mark.slow
PROMPTS = TOY_SPEC["rollout"]["prompts_per_step"]


def test_a_weight_push_failing_half_way_is_pushed_again(start_run, stack):
    steps = 8  # one optimizer step each, and a push after each (sync_every 1)
    # Push 1 serves version 0; the third load (version 2's) and the fifth label (version 4's) lose their replies.
    proxy = GenerationProxy(stack.generation_url, lose_reply={"/collective_rpc": 3, "/update_weight_version": 5})
    learner_url = proxy.start()
    try:
        run = start_run(toy_spec_with(steps=steps, checkpoint_every=4))
        run.start_learner(generation_url=learner_url)
        run.wait()
    finally:
        proxy.stop()

    assert proxy.lost == ["/collective_rpc", "/update_weight_version"]
    log = run.log_tail(1_000_000)
    assert log.count(f"weight push to {learner_url} failed (attempt 1/14)") == 2, log[-3000:]
    assert GenerationClient(stack.generation_url).version() == PolicyVersion(run.run_id, steps)  # the final policy
    logs = [run.directory.parent / f"{run.run_id}-learner.log"]
    counts = counted("weight push reply lost twice", run.run_id, run.directory, logs, stack.redis_url, 0)
    assert counts.exactly_once(steps * PROMPTS)
