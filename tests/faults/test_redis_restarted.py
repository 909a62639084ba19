"""Redis killed (kill -9) mid-run and started again on its append-only file: the registry, the run's stream, its
consumer group, pending entries and slot leases come back, every client reconnects (its calls retry while the port
is closed), and the run finishes with every slot applied once."""

import dataclasses
import signal
import time

import pytest

from tests.e2e.conftest import TOY_SPEC, workers_on
from tests.faults.conftest import counted
from tests.redis_server import start_redis
from tests.servers import free_port, stop

pytestmark = pytest.mark.slow
DOWN_S = 2.0  # as long as a container's restart takes; the clients retry for several seconds


def test_a_run_survives_redis_restarted_on_its_append_only_file(stack, tmp_path):
    directory, port = tmp_path / "redis", free_port()
    directory.mkdir()
    redis = start_redis(directory, port, durable=True)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        with workers_on(dataclasses.replace(stack, redis_url=url), tmp_path) as workers:
            steps = 10
            run_id = workers.client.post("/v1/runs", json=workers.spec(steps=steps, checkpoint_every=3)).json()["id"]
            workers.wait_for(run_id, lambda r: r["steps_done"] >= 3)
            redis.send_signal(signal.SIGKILL)
            redis.wait(10)
            time.sleep(DOWN_S)
            redis = start_redis(directory, port, durable=True)

            done = workers.wait_for(run_id, lambda r: r["state"] not in ("queued", "running"), timeout=300)
            assert (done["state"], done["steps_done"]) == ("succeeded", steps), done
            assert all(process.poll() is None for process in workers.workers.values())  # nobody died of it
            logs = sorted(tmp_path.glob("learner-*.log"))
            counts = counted("Redis kill -9, restarted on its AOF", run_id, workers.runs_dir / run_id, logs, url, 0)
            assert counts.exactly_once(steps * TOY_SPEC["rollout"]["prompts_per_step"])
    finally:
        stop(redis, grace=10)
