"""Every kind of bad stream entry, injected into a live run's queue, is set aside with its reason (dead letter), and
the run finishes with every real slot once: malformed wire forms, deep JSON, another run's group, an absurd slot,
token ids outside the vocabulary."""

import pytest

from cfpo.rollout_group import encode_group
from tests.cfpo.queue.groups import MALFORMED, make_group
from tests.e2e.conftest import toy_spec_with
from tests.faults.conftest import counted

pytestmark = pytest.mark.slow
STEPS, PROMPTS = 4, 4


def test_each_kind_of_poisoned_entry_goes_to_the_dead_letter_and_the_run_finishes(start_run):
    run = start_run(toy_spec_with(steps=STEPS, rollout__prompts_per_step=PROMPTS))
    valid = encode_group(make_group(run.run_id, slot=0))
    poisoned = [param.values[0](dict(valid)) for param in MALFORMED]
    beyond_vocabulary = make_group(run.run_id, slot=3)
    beyond_vocabulary = beyond_vocabulary.model_copy(
        update={"samples": [s.model_copy(update={"completion_ids": [10**6] * 3}) for s in beyond_vocabulary.samples]}
    )
    poisoned += [
        encode_group(make_group(f"{run.run_id}-other", slot=1)),  # another run's group
        encode_group(make_group(run.run_id, slot=10**9)),  # a slot the run does not have
        encode_group(beyond_vocabulary),  # the tiny model has 512 token ids
    ]
    with run.queue() as queue:
        for fields in poisoned:
            queue.redis.xadd(queue.keys.rollouts, fields)
    run.start_learner()
    run.wait()

    log = run.directory.parent / f"{run.run_id}-learner.log"
    counts = counted("poisoned entries", run.run_id, run.directory, [log], run.stack.redis_url, 0)
    assert counts.dead_letters == len(poisoned)
    assert counts.exactly_once(STEPS * PROMPTS)


def test_a_group_of_the_wrong_size_in_a_live_fixed_staleness_run_is_generated_again(start_run):
    """A worker's bug appends a group of 3 completions (the run's group_size is 4) for a slot it leased, mid-run:
    the learner sets it aside and gives the slot back, a worker generates it again at the version fixed staleness
    asks for, and the run finishes with every slot once."""
    steps = 6
    run = start_run(toy_spec_with(steps=steps, staleness={"mode": "fixed", "k": 1}))
    run.start_learner()
    run.wait_for_steps(2)
    with run.queue() as queue:
        slot = queue.reserve_slot("buggy-worker", steps * PROMPTS)
        assert slot is not None
        queue.append(make_group(run.run_id, slot=slot, rewards=(1.0, 0.0, 1.0)))
    run.wait()

    log = run.directory.parent / f"{run.run_id}-learner.log"
    assert f"slot {slot} of run:{run.run_id}:rollouts goes back to the rollout workers" in log.read_text()
    counts = counted("a wrong-sized group mid-run, fixed k=1", run.run_id, run.directory, [log], run.stack.redis_url, 0)
    assert counts.dead_letters == 1
    assert counts.exactly_once(steps * PROMPTS)
