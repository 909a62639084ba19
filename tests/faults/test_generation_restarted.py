"""A generation server killed and started again mid-run comes back on its base weights (label ``default``). With
max_staleness 0 no lane may generate on them and the learner waits for data: the rollout worker that sees the
server behind asks the learner to push again, and the run goes on to succeed with every slot applied once."""

import dataclasses

import pytest

from cfpo.cli.stack import kill_process_group
from tests.e2e.conftest import TOY_SPEC, workers_on
from tests.faults.conftest import counted
from tests.servers import free_port, python_module, running

pytestmark = pytest.mark.slow
PROMPTS = TOY_SPEC["rollout"]["prompts_per_step"]


def test_a_restarted_generation_server_is_fed_the_run_weights_again(stack, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = python_module("services.generation", "--model", str(stack.model_dir), "--port", str(port))
    with running(serve, f"{url}/health", log=tmp_path / "generation-0.log") as server:
        own = dataclasses.replace(stack, generation_url=url, generation_pid=server.pid)
        with workers_on(own, tmp_path) as workers:
            steps = 8
            spec = workers.spec(steps=steps, staleness={"mode": "bounded", "max_staleness": 0})
            run_id = workers.client.post("/v1/runs", json=spec).json()["id"]
            before = workers.wait_for(run_id, lambda r: r["steps_done"] >= 2)["steps_done"]
            # Right after a recorded step: its push is done, and the learner waits for the next step's data.
            workers.wait_for(run_id, lambda r: r["steps_done"] > before, timeout=120)
            kill_process_group(server)  # kill -9, vLLM's engine and workers with it
            with running(serve, f"{url}/health", log=tmp_path / "generation-1.log"):
                done = workers.wait_for(run_id, lambda r: r["state"] not in ("queued", "running"), timeout=300)
            assert done["state"] == "succeeded", done
            logs = sorted(tmp_path.glob("learner-*.log"))
            assert "pushing again" in "".join(log.read_text() for log in logs)
            counts = counted(
                "generation kill -9 and started again, max_staleness 0",
                run_id,
                workers.runs_dir / run_id,
                logs,
                stack.redis_url,
                0,
            )
            assert counts.exactly_once(steps * PROMPTS)
