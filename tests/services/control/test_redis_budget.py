"""Redis's memory is bounded: a submit whose queue would take it past the budget is refused (422, by how much), and
an ended run's queue is deleted once its retention has passed (its record and history stay)."""

import math
import time

import pytest

from cfpo.queue import QueueSettings, RolloutQueue, RunKeys
from cfpo.registry import RunRegistry
from cfpo.run_spec import RunSpec
from services.control.budget import MIB, queue_bytes
from tests.cfpo.queue.groups import make_group
from tests.services.control.conftest import control_api, spec

ONE_RUN = queue_bytes(RunSpec.model_validate(spec()))
BUDGET_MIB = math.ceil(1.5 * ONE_RUN / MIB)  # room for one run of spec(), not two


@pytest.fixture(scope="module")
def tight_api(redis_url, tmp_path_factory):
    args = ("--redis-budget-mib", str(BUDGET_MIB), "--ended-run-retention-s", "0")
    with control_api(redis_url, tmp_path_factory.mktemp("budget") / "api.log", *args) as api:
        yield api


def test_a_run_that_would_take_redis_past_its_budget_is_refused_by_how_much(tight_api):
    with tight_api.client() as client:
        first = client.post("/v1/runs", json=spec())
        assert first.status_code == 201, first.text
        refused = client.post("/v1/runs", json=spec())
        assert refused.status_code == 422
        over = (2 * ONE_RUN - BUDGET_MIB * MIB) / MIB
        message = refused.json()["message"]
        assert f"{over:.1f} MiB over redis_budget_mib = {BUDGET_MIB}" in message, message
        assert f"{ONE_RUN / MIB:.1f} MiB" in message and "rollout.max_tokens" in message
        assert client.get("/v1/runs", params={"state": "queued"}).json()["runs"][0]["id"] == first.json()["id"]
        client.post(f"/v1/runs/{first.json()['id']}/cancel")  # ended runs take no budget
        assert client.post("/v1/runs", json=spec()).status_code == 201


def test_an_ended_runs_queue_goes_after_its_retention_and_its_record_stays(tight_api, redis_url, worker):
    with tight_api.client() as client, RunRegistry(redis_url) as registry:
        run_id = client.post("/v1/runs", json=spec()).json()["id"]
        claim = registry.claim_next(worker)
        with RolloutQueue(run_id, QueueSettings(redis_url=redis_url)) as queue:
            assert queue.reserve_slot("rollout-0", 12) == 0
            queue.append(make_group(run_id, slot=0))
            queue.publish_version(1)
            keys = [key for key in RunKeys(run_id).every_key if queue.redis.exists(key)]
            assert len(keys) == 3  # stream, slot counter, version
            registry.record_step(run_id, claim.lease, 0, 1, {"loss": 0.5})
            registry.finish(run_id, claim.lease, "succeeded")
            deadline = time.monotonic() + 10
            while any(queue.redis.exists(key) for key in keys):
                assert time.monotonic() < deadline, "the ended run's queue is still there after 10 s"
                time.sleep(0.1)
        assert client.get(f"/v1/runs/{run_id}").json()["state"] == "succeeded"
        assert [step["step"] for step in client.get(f"/v1/runs/{run_id}/metrics").json()["steps"]] == [0]


def test_the_retention_keeps_a_queue_until_it_has_passed(registry, redis_url, worker):
    run_id = registry.submit(RunSpec.model_validate(spec())).id
    lease = registry.claim_next(worker).lease
    with RolloutQueue(run_id, QueueSettings(redis_url=redis_url)) as queue:
        queue.append(make_group(run_id, slot=0))
        registry.finish(run_id, lease, "failed", "test")
        assert run_id not in registry.drop_ended_queues(retention_s=3600)
        assert queue.redis.exists(queue.keys.rollouts)
        assert run_id in registry.drop_ended_queues(retention_s=0)
        assert not queue.redis.exists(queue.keys.rollouts)
        assert run_id not in registry.drop_ended_queues(retention_s=0)
