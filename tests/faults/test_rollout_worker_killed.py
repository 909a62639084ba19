"""A rollout worker that dies or stops mid-run loses no slot: its leases go to the worker still running, and the
run applies every slot exactly once (the reliability review's D3)."""

import signal
import socket
import time

import pytest

from tests.e2e.conftest import toy_spec_with
from tests.faults.conftest import counted

pytestmark = pytest.mark.slow

STEPS, PROMPTS = 12, 4  # long enough that both workers still hold slots once the run is under way


def _holders(run) -> dict[int, str]:
    with run.queue() as queue:
        return {int(slot): holder.decode() for slot, holder in queue.redis.hgetall(queue.keys.slot_holders).items()}


def _slots_of(run, pid: int) -> list[int]:
    return sorted(slot for slot, holder in _holders(run).items() if holder.startswith(f"{socket.gethostname()}:{pid}:"))


def _wait_until_it_holds_slots(run, worker, after_steps: int) -> None:
    run.wait_for_steps(after_steps)
    deadline = time.monotonic() + 60
    while not _slots_of(run, worker.pid):
        assert worker.poll() is None, "the worker finished before it could be stopped holding a slot"
        assert time.monotonic() < deadline, "the worker held no slot for 60 s"
        time.sleep(0.01)


def _counts(scenario: str, run):
    log = run.directory.parent / f"{run.run_id}-learner.log"
    return counted(scenario, run.run_id, run.directory, [log], run.stack.redis_url, lost=0)


def test_a_killed_workers_slots_are_filled_by_the_other_worker(start_run):
    spec = toy_spec_with(steps=STEPS, rollout__prompts_per_step=PROMPTS, checkpoint_every=STEPS)
    run = start_run(spec, workers=2, rollout_args=("--slot-lease-s", "3"))
    run.start_learner()
    doomed, survivor = run.workers
    _wait_until_it_holds_slots(run, doomed, after_steps=1)
    doomed.send_signal(signal.SIGKILL)  # no chance to hand anything back
    doomed.wait(10)

    run.wait()
    assert _counts("rollout worker kill -9 mid-group", run).exactly_once(STEPS * PROMPTS)  # the dead one's too
    assert survivor.wait(60) == 0
    assert not _holders(run)  # no lease left behind


def test_a_stopped_worker_hands_its_slots_back_at_once(start_run):
    spec = toy_spec_with(steps=STEPS, rollout__prompts_per_step=PROMPTS, checkpoint_every=STEPS)
    run = start_run(spec, workers=2, rollout_args=("--slot-lease-s", "600"))  # a lease longer than the test
    run.start_learner()
    stopped, survivor = run.workers
    _wait_until_it_holds_slots(run, stopped, after_steps=1)
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(60) == 0
    assert _slots_of(run, stopped.pid) == []  # released: the survivor may take them now, not in 600 s

    run.wait()
    assert _counts("rollout worker SIGTERM mid-group", run).exactly_once(STEPS * PROMPTS)
    assert survivor.wait(60) == 0
