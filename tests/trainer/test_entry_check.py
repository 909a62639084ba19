"""The learner sets aside stream entries its run cannot take (an absurd slot, token ids beyond the vocabulary, a
sequence beyond the positions), on a real Redis and the tiny model's real config, and reads the good ones."""

import uuid

import pytest

from cfpo.queue import QueueSettings, RolloutQueue
from cfpo.run_spec import RunSpec
from tests.cfpo.queue.groups import make_group
from tests.redis_server import redis_url  # noqa: F401 -- the fixture
from trainer.entry_check import RunEntryCheck


@pytest.fixture
def check(tiny_model_dir) -> RunEntryCheck:
    rollout = {"prompts_per_step": 2, "group_size": 2}  # make_group's groups hold 2 samples
    spec = RunSpec(model=tiny_model_dir, steps=3, rollout=rollout, staleness={"max_staleness": 0})
    return RunEntryCheck.for_run(spec)


def test_the_check_reads_the_model_and_the_run(check):
    assert (check.total_slots, check.vocab_size, check.max_positions) == (6, 512, 512)


def _with_sample(run_id, **changes):
    group = make_group(run_id, slot=1)
    return group.model_copy(update={"samples": [s.model_copy(update=changes) for s in group.samples]})


def test_entries_the_run_cannot_take_go_to_the_dead_letter_with_their_reason(check, redis_url):  # noqa: F811
    run_id = f"test-{uuid.uuid4().hex[:8]}"
    settings = QueueSettings(redis_url=redis_url)
    with RolloutQueue(run_id, settings) as producer, RolloutQueue(run_id, settings, check) as learner:
        bad = {
            "slot: 10**15 is beyond the run's last slot 5": make_group(run_id, slot=10**15),
            "samples.0.completion_ids: token id 512 is outside the vocabulary 0-511": _with_sample(
                run_id, completion_ids=[1, 512, 2]
            ),
            "samples.0.prompt_ids: token id 2147483647 is outside the vocabulary 0-511": _with_sample(
                run_id, prompt_ids=[2**31 - 1]
            ),
            "samples.0: 603 tokens, more than the model's 512 positions": _with_sample(run_id, prompt_ids=[5] * 600),
        }
        for group in bad.values():
            producer.append(group)
        good = producer.append(make_group(run_id, slot=5))

        assert [entry.id for entry in learner.read("learner", count=10)] == [good]
        reasons = [letter.reason for letter in learner.dead_letters()]
        assert [reason.replace("1000000000000000", "10**15") for reason in reasons] == list(bad)
        assert learner.depth().total == 1  # the refused entries are acknowledged and gone


def test_a_group_of_the_wrong_size_is_set_aside_and_its_slot_generated_again(check, redis_url):  # noqa: F811
    run_id = f"test-{uuid.uuid4().hex[:8]}"
    settings = QueueSettings(redis_url=redis_url)
    with RolloutQueue(run_id, settings) as worker, RolloutQueue(run_id, settings, check) as learner:
        assert [worker.reserve_slot("worker-a", check.total_slots) for _ in range(2)] == [0, 1]
        worker.append(make_group(run_id, slot=0, rewards=(1.0, 0.0, 1.0)))  # a worker's bug: 3 completions, not 2
        worker.append(make_group(run_id, slot=1))

        assert [entry.group.slot for entry in learner.read("learner", count=10)] == [1]
        assert [letter.reason for letter in learner.dead_letters()] == [
            "samples: 3 in the group, the run's group_size is 2"
        ]
        assert worker.unfilled_slots(check.total_slots) == check.total_slots - 1  # slot 0 is unfilled again
        assert worker.reserve_expired_slot("worker-b", check.total_slots) == 0  # the next worker to ask fills it
