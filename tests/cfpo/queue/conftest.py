"""Queues on one real Redis for the session; every test gets its own run id, so no state leaks between tests."""

import uuid

import pytest

from cfpo.queue import QueueSettings, RolloutQueue
from tests.redis_server import redis_url  # noqa: F401 -- the fixture, for this directory


@pytest.fixture
def run_id() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_queue(redis_url, run_id):  # noqa: F811 -- the imported fixture
    """Separate queue objects (own connections) for the test's run, as separate producer and learner processes have."""
    queues = []

    def make(**settings) -> RolloutQueue:
        queues.append(RolloutQueue(run_id, QueueSettings(redis_url=redis_url, **settings)))
        return queues[-1]

    yield make
    for queue in queues:
        queue.close()
