"""A rollout worker keeps several groups in flight on the real vLLM server, as its generation requests show."""

import pytest

from tests.e2e.conftest import toy_spec_with
from tests.e2e.generation_proxy import GenerationProxy

pytestmark = pytest.mark.slow


@pytest.fixture
def proxy(stack):
    def start(**faults) -> tuple[GenerationProxy, str]:
        proxy = GenerationProxy(stack.generation_url, **faults)
        started.append(proxy)
        return proxy, proxy.start()

    started: list[GenerationProxy] = []
    yield start
    for proxy in started:
        proxy.stop()


def _applied_slots(run) -> list[int]:
    return sorted(slot for line in run.applied() for slot in line["slots"])


def test_worker_sends_several_groups_at_once_and_no_more_than_allowed(start_run, proxy):
    recorder, url = proxy()
    run = start_run(toy_spec_with(rollout__max_inflight_groups=4, steps=6), generation_url=url)
    run.start_learner()
    run.wait()
    assert _applied_slots(run) == list(range(6 * 4))
    # Admission lets 8 groups run (max staleness 1: this step and the next); the worker caps them at 4.
    assert 3 <= recorder.max_in_flight() <= 4, recorder.max_in_flight()
    assert len(recorder.calls) == 6 * 4


def test_failed_generation_is_retried_while_other_groups_go_on(start_run, proxy):
    recorder, url = proxy(fail_first=1, fail_after_s=1.5)
    run = start_run(toy_spec_with(rollout__max_inflight_groups=4, steps=4), generation_url=url)
    run.start_learner()
    run.wait()
    assert _applied_slots(run) == list(range(4 * 4))  # the failed group's slot too, once
    [failed] = [call for call in recorder.calls if call.failed]
    finished_meanwhile = [c for c in recorder.calls if not c.failed and failed.started < c.ended < failed.ended]
    assert len(finished_meanwhile) >= 2  # the other lanes kept generating while this one waited for its error
    retries = [c for c in recorder.calls if c.body == failed.body and not c.failed]
    assert len(retries) == 1 and retries[0].started >= failed.ended  # same request (same seed), after the error
