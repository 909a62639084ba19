"""`docker compose up`, for real: the CPU image built from deploy/docker/Dockerfile, the `cpu` profile brought up
from docker-compose.yml as users run it, a run submitted over the published control API that trains SmolLM2 (made
by the `model` one-shot) to success, its files on the volume, every Prometheus target up and every dashboard panel
with data; then `down` and `up` keep the run, and a learner container killed mid-run is restarted by its restart
policy and resumes with every slot applied once.

On this machine that is podman with docker-compose 1.29 and local stand-ins for the public images
(tests/deploy/podman.py says what differs from Docker). Grafana is left out: it has no Debian package to make a
stand-in from; its dashboards' queries are checked against the stack's Prometheus instead."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests import REPO_ROOT
from tests.deploy import podman
from tests.deploy.test_compose import run_compose
from tests.deploy.test_dashboards import all_queries, as_all_selected
from tests.servers import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(podman.unavailable() is not None, reason=str(podman.unavailable())),
]

PROJECT = "cfpo-compose-test"
IMAGE = "cfpo/cfpo:0.1.0"  # the tag docker-compose.yml runs
# Every service of the cpu profile but Grafana, which has no stand-in here.
SERVICES = ["redis", "model", "reward", "control", "rollout", "generation-cpu", "learner-cpu", "prometheus"]
ONE_SHOT = {"model"}
MODEL = "/data/models/smollm2-135m-instruct"  # where the `model` one-shot prepares it, and generation serves it
JOBS = {"generation", "reward", "control", "learner", "rollout"}
RATE_INTERVAL = "20s"  # Grafana's $__rate_interval: four of compose's 5 s scrapes
TOKEN = "compose-stack-test-token"
REDIS_PASSWORD = "composeStackRedis0"
TERMINAL = {"succeeded", "failed", "cancelled"}
PROMPTS = 2
STEPS = 4  # of the first run


def run_spec(name: str, steps: int, checkpoint_every: int) -> dict:
    return {
        "name": name,
        "model": MODEL,
        "task": {"kind": "arithmetic", "difficulty": [1, 2], "seed": 0},
        "rollout": {"group_size": 4, "prompts_per_step": PROMPTS, "max_tokens": 16},
        "learner": {"loss": {"name": "cfpo", "ratio_reference": "proximal"}},
        "staleness": {"mode": "bounded", "max_staleness": 1},
        "evaluation": {"problems": 8},
        "steps": steps,
        "checkpoint_every": checkpoint_every,
        "seed": 0,
    }


@dataclass
class ComposeStack:
    """The compose project as a user drives it: ``env``, the settings `docker compose` is given (images, socket,
    secrets, the published ports this test picked)."""

    env: dict[str, str]

    def compose(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        result = run_compose(*args, timeout=timeout, **self.env)
        assert result.returncode == 0, f"docker-compose {' '.join(args)}: {result.stderr[-3000:]}\n{self.logs()}"
        return result

    def logs(self, tail: int = 40) -> str:
        return run_compose("logs", "--no-color", f"--tail={tail}", timeout=120, **self.env).stdout[-12000:]

    @property
    def control_port(self) -> int:
        return int(self.env["CFPO_CONTROL_PORT"])

    @property
    def prometheus_port(self) -> int:
        return int(self.env["CFPO_PROMETHEUS_PORT"])

    def up(self) -> None:
        """`up -d` without building (the image is built above, with this machine's pip settings), then wait until
        every long-running service is healthy and the one-shot has succeeded."""
        self.compose("up", "-d", "--no-build", *SERVICES)
        deadline = time.monotonic() + 1500  # generation loads and compiles SmolLM2: minutes on 2 busy cores
        while True:
            by_service = {c["service"]: c for c in podman.containers(PROJECT)}
            waiting = [s for s in SERVICES if not self._ready(s, by_service.get(s))]
            if not waiting:
                return
            assert time.monotonic() < deadline, f"not healthy: {waiting}: {by_service}\n{self.logs()}"
            time.sleep(5)

    @staticmethod
    def _ready(service: str, container: dict | None) -> bool:
        if container is None:
            return False
        if service in ONE_SHOT:
            return container["state"] == "exited"  # depends_on: service_completed_successfully checks its code
        return container["state"] == "running" and container["health"] == "healthy"

    @property
    def control(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.control_port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )

    def submit(self, spec: dict) -> str:
        with self.control as api:
            created = api.post("/v1/runs", json=spec)
        assert created.status_code == 201, created.text
        return created.json()["id"]

    def run(self, run_id: str) -> dict:
        with self.control as api:
            answer = api.get(f"/v1/runs/{run_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def wait_until(self, run_id: str, done, what: str, timeout: float = 1200) -> dict:
        deadline = time.monotonic() + timeout
        while not done(run := self.run(run_id)):
            assert time.monotonic() < deadline, f"run {run_id}: {what} did not happen: {run}\n{self.logs()}"
            time.sleep(3)
        return run

    def prometheus(self, path: str, **params: str) -> list | dict:
        answer = httpx.get(f"http://127.0.0.1:{self.prometheus_port}/api/v1/{path}", params=params, timeout=30).json()
        assert answer["status"] == "success", answer
        return answer["data"]

    def run_dir(self, run_id: str) -> Path:
        return podman.volume_path(f"{PROJECT}_cfpo-data") / "runs" / run_id


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[ComposeStack]:
    work = tmp_path_factory.mktemp("compose-stack")
    images = podman.standin_images()
    podman.build_image(
        IMAGE,
        REPO_ROOT / "deploy/docker/Dockerfile",
        {"PYTHON_IMAGE": images["CFPO_PYTHON_IMAGE"]},
        work / "build.log",
    )
    with podman.docker_socket(work) as docker_host, podman.HealthChecks(PROJECT):
        stack = ComposeStack(
            env={
                **images,
                "DOCKER_HOST": docker_host,
                "COMPOSE_PROJECT_NAME": PROJECT,
                "COMPOSE_PROFILES": "cpu",
                "CFPO_API_TOKEN": TOKEN,
                "CFPO_REDIS_PASSWORD": REDIS_PASSWORD,
                "CFPO_CONTROL_PORT": str(free_port()),
                "CFPO_PROMETHEUS_PORT": str(free_port()),
            }
        )
        stack.compose("down", "--volumes", "--remove-orphans", timeout=900)  # what an interrupted run left
        try:
            stack.up()
            yield stack
        finally:
            (work / "compose.log").write_text(stack.logs(tail=400))
            stack.compose("down", "--volumes", "--remove-orphans", timeout=900)
    assert podman.leftovers(PROJECT) == {"container": [], "volume": [], "network": []}


@pytest.fixture(scope="module")
def trained(stack: ComposeStack) -> tuple[str, float]:
    """A 4-step run submitted over REST, trained to success; (its id, when it was submitted)."""
    started = time.time()
    run_id = stack.submit(run_spec("compose", steps=STEPS, checkpoint_every=2))
    run = stack.wait_until(run_id, lambda r: r["state"] in TERMINAL, "finishing")
    assert run["state"] == "succeeded", f"{run}\n{stack.logs()}"
    time.sleep(15)  # three more scrapes after the last step
    return run_id, started


def test_run_submitted_over_rest_trains_and_writes_its_files_on_the_volume(stack, trained):
    run_id, _ = trained
    run_dir = stack.run_dir(run_id)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sorted({row["step"] for row in rows}) == list(range(STEPS))
    assert (run_dir / "spec.yaml").exists() and (run_dir / "checkpoints/latest").exists()
    # written by the learner's user (uid 1000) on a volume the image's /data seeded
    assert {path.stat().st_uid for path in (run_dir, run_dir / "metrics.jsonl")} == {1000}


def test_every_prometheus_target_is_up(stack, trained):
    targets = stack.prometheus("targets")["activeTargets"]
    assert {t["labels"]["job"] for t in targets} == JOBS
    assert {t["labels"]["job"]: t["health"] for t in targets} == dict.fromkeys(JOBS, "up"), targets


@pytest.mark.parametrize("uid,title,expr", all_queries(), ids=[f"{u}/{t}" for u, t, _ in all_queries()])
def test_dashboard_panel_query_returns_data(stack, trained, uid, title, expr):
    _, started = trained
    query = as_all_selected(expr, RATE_INTERVAL)
    series = stack.prometheus("query_range", query=query, start=str(started), end=str(time.time()), step="5s")["result"]
    values = [float(v) for s in series for _, v in s["values"]]
    assert any(not math.isnan(v) for v in values), f"{uid} / {title}: no data for {query}"


def test_down_and_up_keep_the_run(stack, trained):
    run_id, _ = trained
    stack.compose("down", timeout=900)
    assert podman.containers(PROJECT) == []
    stack.up()
    with stack.control as api:
        listed = api.get("/v1/runs").json()["runs"]
    assert {r["id"]: r["state"] for r in listed}.get(run_id) == "succeeded", listed
    assert stack.run(run_id)["steps_done"] == STEPS


def test_killed_learner_container_is_restarted_and_resumes_with_every_slot_applied_once(stack, trained):
    steps = 6
    run_id = stack.submit(run_spec("compose-learner-killed", steps=steps, checkpoint_every=2))
    stack.wait_until(run_id, lambda r: r["steps_done"] >= 2, "two steps")
    (learner,) = [c for c in podman.containers(PROJECT) if c["service"] == "learner-cpu"]
    # SIGKILL to the container's init from the host, as the OOM killer ends it. podman 4.3 does not restart a
    # container ended by `podman kill -s KILL` (seen here; Docker restarts one ended by `docker kill`).
    os.kill(learner["pid"], signal.SIGKILL)
    run = stack.wait_until(run_id, lambda r: r["state"] in TERMINAL, "finishing after the kill", timeout=1800)
    assert run["state"] == "succeeded", f"{run}\n{stack.logs()}"
    (restarted,) = [c for c in podman.containers(PROJECT) if c["service"] == "learner-cpu"]
    assert restarted["id"] == learner["id"] and restarted["restarts"] >= 1, restarted
    assert run["restarts"] >= 1, run  # the run went back to the queue and was resumed from its checkpoint
    rows = [json.loads(line) for line in (stack.run_dir(run_id) / "applied.jsonl").read_text().splitlines()]
    slots = Counter(slot for row in rows for slot in row["slots"])
    print(
        f"[compose] learner container killed: slots applied {sum(slots.values())} ({len(slots)} distinct) "
        f"of {steps * PROMPTS}, learner restarts {restarted['restarts']}, run restarts {run['restarts']}"
    )
    assert sum(slots.values()) == len(slots) == steps * PROMPTS
