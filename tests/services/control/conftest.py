"""A real control API (``python -m services.control`` under uvicorn, a subprocess) on a real redis-server.

The session's API requires TOKEN and reaps runs after 1 s without a heartbeat, so worker deaths show within
seconds. Every test leaves no queued or running run behind, so the next test's ``claim_next`` gets its own run.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cfpo.registry import RunRegistry
from tests.redis_server import redis_url  # noqa: F401 -- the fixture, for this directory
from tests.servers import free_port, python_module, running

TOKEN = "test-token-0123456789"
HEARTBEAT_TIMEOUT_S = 1.0
FAST_REAPER = ["--heartbeat-timeout-s", str(HEARTBEAT_TIMEOUT_S), "--reap-interval-s", "0.2"]


@dataclass(frozen=True)
class Api:
    url: str
    token: str | None

    def client(self, token: str | None = "default") -> httpx.Client:
        token = self.token if token == "default" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@contextlib.contextmanager
def control_api(redis_url: str, log: Path, *args: str, token: str | None = TOKEN) -> Iterator[Api]:  # noqa: F811
    """Start the API (without $CFPO_GENERATION_URL from the caller's shell unless ``args`` name one)."""
    port = free_port()
    argv = python_module("services.control", "--port", str(port), "--redis-url", redis_url, *FAST_REAPER, *args)
    # Only the child's environment: the session-wide API must not leave its token in this process's environment,
    # where every later server (a whole stack) would inherit it.
    env = {k: v for k, v in os.environ.items() if k not in ("CFPO_GENERATION_URL", "CFPO_REWARD_URL", "CFPO_API_TOKEN")}
    if token:
        env["CFPO_API_TOKEN"] = token
    with running(argv, f"http://127.0.0.1:{port}/health", log=log, timeout=60, env=env):
        yield Api(f"http://127.0.0.1:{port}", token)


@pytest.fixture(scope="session")
def api(redis_url, tmp_path_factory) -> Iterator[Api]:  # noqa: F811
    with control_api(redis_url, tmp_path_factory.mktemp("control") / "api.log") as started:
        yield started


@pytest.fixture
def client(api) -> Iterator[httpx.Client]:
    with api.client() as http:
        yield http


@pytest.fixture
def registry(redis_url) -> Iterator[RunRegistry]:  # noqa: F811
    """The worker side, as a learner process would hold it."""
    with RunRegistry(redis_url) as opened:
        yield opened


@pytest.fixture(autouse=True)
def no_runs_left(redis_url) -> Iterator[None]:  # noqa: F811
    yield
    with RunRegistry(redis_url) as registry:
        while queued := registry.list_runs("queued", limit=1000):
            for run in queued:
                registry.cancel(run.id, "test over")
        for run in registry.list_runs("running", limit=1000):
            registry.finish(
                run.id, registry.redis.hget(f"run:{run.id}:record", "token").decode(), "failed", "test over"
            )


@pytest.fixture
def worker() -> str:
    return f"worker-{uuid.uuid4().hex[:8]}"


def spec(**overrides) -> dict:
    """A small valid run spec body; the model directory need not exist (the API does not read it)."""
    return {"model": "/models/tiny", "steps": 3, "learner": {"loss": {"ratio_reference": "behaviour"}}, **overrides}
