"""Redis killed (kill -9) mid-run and started again on its append-only file: the registry, the run's stream, its
consumer group, pending entries and slot leases come back, every client reconnects (its calls retry while the port
is closed), and the run finishes with every slot applied once."""

import dataclasses

import pytest

from tests.e2e.conftest import TOY_SPEC, workers_on
from tests.faults.conftest import counted

pytestmark = pytest.mark.slow
DOWN_S = 2.0  # closed for as long as a container's restart takes


def test_a_run_survives_redis_restarted_on_its_append_only_file(stack, own_redis, tmp_path):
    with workers_on(dataclasses.replace(stack, redis_url=own_redis.url), tmp_path) as workers:
        steps = 10
        run_id = workers.client.post("/v1/runs", json=workers.spec(steps=steps, checkpoint_every=3)).json()["id"]
        workers.wait_for(run_id, lambda r: r["steps_done"] >= 3)
        own_redis.restart(DOWN_S)

        done = workers.wait_for(run_id, lambda r: r["state"] not in ("queued", "running"), timeout=300)
        assert (done["state"], done["steps_done"]) == ("succeeded", steps), done
        assert all(process.poll() is None for process in workers.workers.values())  # nobody died of it
        logs = sorted(tmp_path.glob("learner-*.log"))
        url = own_redis.url
        counts = counted("Redis kill -9, restarted on its AOF", run_id, workers.runs_dir / run_id, logs, url, 0)
        assert counts.exactly_once(steps * TOY_SPEC["rollout"]["prompts_per_step"])
