"""The whole pipeline on CPU: real Redis, the real vLLM CPU server, the real reward service, learner and workers
as the processes users run."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from cfpo.queue import QueueSettings, RolloutQueue
from tests.redis_server import redis_url  # noqa: F401  (fixture)
from tests.servers import free_port, python_module, running, stop


@dataclass
class Stack:
    redis_url: str
    generation_url: str
    reward_url: str
    model_dir: Path
    generation_pid: int  # its process group's leader, for the fault tests that stall it

    def env(self) -> dict[str, str]:
        return {
            "REDIS_URL": self.redis_url,
            "CFPO_GENERATION_URL": self.generation_url,
            "CFPO_REWARD_URL": self.reward_url,
        }


@pytest.fixture(scope="package")
def stack(redis_url, tiny_model_dir, tmp_path_factory):  # noqa: F811
    logs = tmp_path_factory.mktemp("stack-logs")
    generation_port, reward_port = free_port(), free_port()
    generation = python_module("services.generation", "--model", str(tiny_model_dir), "--port", str(generation_port))
    reward = python_module("services.reward", "--port", str(reward_port))
    with (
        running(reward, f"http://127.0.0.1:{reward_port}/health", log=logs / "reward.log"),
        running(generation, f"http://127.0.0.1:{generation_port}/health", log=logs / "generation.log") as served,
    ):
        urls = f"http://127.0.0.1:{generation_port}", f"http://127.0.0.1:{reward_port}"
        yield Stack(redis_url, *urls, tiny_model_dir, served.pid)


@dataclass
class Run:
    """One run's processes and files."""

    stack: Stack
    run_id: str
    directory: Path
    spec_path: Path
    workers: list[subprocess.Popen]
    learner: subprocess.Popen | None = None

    def start_learner(self, *extra: str, generation_url: str | None = None) -> subprocess.Popen:
        """``generation_url``: where this learner reaches generation, default the stack's server."""
        argv = python_module(
            "trainer",
            "--spec",
            str(self.spec_path),
            "--run-id",
            self.run_id,
            "--run-dir",
            str(self.directory),
            "--data-timeout",
            "120",
            *extra,
        )
        log = (self.directory.parent / f"{self.run_id}-learner.log").open("ab")
        env = {**_env(self.stack), "CFPO_GENERATION_URL": generation_url or self.stack.generation_url}
        self.learner = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        return self.learner

    def wait(self, timeout: float = 240) -> int:
        code = self.learner.wait(timeout)
        assert code == 0, self.log_tail()
        return code

    def kill_learner(self) -> None:
        self.learner.send_signal(signal.SIGKILL)
        self.learner.wait(30)

    def metrics(self) -> list[dict]:
        return _jsonl(self.directory / "metrics.jsonl")

    def applied(self) -> list[dict]:
        return _jsonl(self.directory / "applied.jsonl")

    def evaluations(self) -> list[dict]:
        return _jsonl(self.directory / "eval.jsonl")

    def queue(self) -> RolloutQueue:
        return RolloutQueue(self.run_id, QueueSettings(redis_url=self.stack.redis_url))

    def log_tail(self, chars: int = 4000) -> str:
        return (self.directory.parent / f"{self.run_id}-learner.log").read_text()[-chars:]

    def wait_for_steps(self, steps: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while len({row["step"] for row in self.metrics()}) < steps:
            assert self.learner.poll() is None, self.log_tail()
            assert time.monotonic() < deadline, f"fewer than {steps} steps after {timeout} s"
            time.sleep(0.2)


def _env(stack: Stack) -> dict[str, str]:
    import os

    return {**os.environ, **stack.env()}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


TOY_SPEC = {
    "task": {"kind": "arithmetic", "difficulty": [1, 2], "seed": 0},
    "rollout": {"group_size": 4, "prompts_per_step": 4, "max_tokens": 16, "rewards": {"digit_share": 1.0}},
    "learner": {"loss": {"name": "cfpo", "ratio_reference": "behaviour"}, "optimizer": {"lr": 5.0e-3}},
    "staleness": {"mode": "bounded", "max_staleness": 1},
    "steps": 20,
    "checkpoint_every": 5,
}


def toy_spec_with(**changes) -> dict:
    """TOY_SPEC with ``section__key=value`` changes."""
    spec = {key: (dict(value) if isinstance(value, dict) else value) for key, value in TOY_SPEC.items()}
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = spec
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return spec


@pytest.fixture
def start_run(stack, tmp_path, request):
    """Write a spec, start its rollout workers; the test starts (and restarts) the learner."""
    runs: list[Run] = []

    def start(
        spec: dict,
        *,
        workers: int = 1,
        generation_url: str | None = None,
        rollout_args: tuple[str, ...] = (),
        redis: str | None = None,
    ) -> Run:
        """``generation_url``: where the workers (not the learner) reach generation, default the stack's server;
        ``rollout_args``: more flags for the workers; ``redis``: the run's Redis URL, default the stack's."""
        on = dataclasses.replace(stack, redis_url=redis or stack.redis_url)
        run_id = f"{request.node.name.replace('[', '-').rstrip(']')}-{len(runs)}"
        spec_path = tmp_path / f"{run_id}.yaml"
        spec_path.write_text(yaml.safe_dump({"model": str(stack.model_dir), **spec}))
        processes = [
            subprocess.Popen(
                python_module("services.rollout", "--spec", str(spec_path), "--run-id", run_id, *rollout_args),
                stdout=(tmp_path / f"{run_id}-rollout-{i}.log").open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**_env(on), "CFPO_GENERATION_URL": generation_url or stack.generation_url},
            )
            for i in range(workers)
        ]
        run = Run(on, run_id, tmp_path / run_id, spec_path, processes)
        runs.append(run)
        return run

    yield start
    for run in runs:
        for process in [*run.workers, *([run.learner] if run.learner else [])]:
            stop(process, grace=10)


API_TOKEN = "e2e-token"


@dataclass
class WorkerStack:
    """The deployed shape on the stack: a control API and learner and rollout workers in worker mode."""

    stack: Stack
    client: httpx.Client
    runs_dir: Path
    start: Callable[[str], subprocess.Popen]  # "learner" or "rollout": one more worker, as the chart runs them
    workers: dict[str, subprocess.Popen]  # the first learner and rollout worker

    def spec(self, **changes) -> dict:
        return {**TOY_SPEC, "model": str(self.stack.model_dir), **changes}

    def wait_for(self, run_id: str, done: Callable[[dict], bool], timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.client.get(f"/v1/runs/{run_id}").json()
            if done(run):
                return run
            time.sleep(0.5)
        raise AssertionError(f"run {run_id} still {run['state']} at step {run['steps_done']} after {timeout} s")


@pytest.fixture
def worker_stack(stack, tmp_path) -> Iterator[WorkerStack]:
    """Control API (model check against the real generation service, reaper after 6 s of silence) and one learner
    and one rollout worker; more with ``start``."""
    with workers_on(stack, tmp_path) as started:
        yield started


@contextlib.contextmanager
def workers_on(stack: Stack, tmp_path: Path) -> Iterator[WorkerStack]:
    """The worker stack's processes on ``stack`` (its Redis replaced, say), their logs and runs in ``tmp_path``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**_env(stack), "CFPO_API_TOKEN": API_TOKEN}
    control = python_module(
        "services.control",
        "--port",
        str(port),
        "--generation-url",
        stack.generation_url,
        "--heartbeat-timeout-s",
        "6",
        "--reap-interval-s",
        "1",
    )
    started: list[subprocess.Popen] = []

    def start(name: str) -> subprocess.Popen:
        argv = {
            "learner": python_module("trainer", "--worker", "--runs-dir", str(tmp_path / "runs")),
            "rollout": python_module("services.rollout", "--worker"),
        }[name]
        log = (tmp_path / f"{name}-{len(started)}.log").open("wb")
        started.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env))
        return started[-1]

    with running(control, f"{url}/health", log=tmp_path / "control.log", env=env):
        try:
            workers = {"learner": start("learner"), "rollout": start("rollout")}
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30) as client:
                yield WorkerStack(stack, client, tmp_path / "runs", start, workers)
        finally:
            for process in started:
                stop(process, grace=15)
