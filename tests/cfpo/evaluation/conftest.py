"""The services the evaluation tests run against: the reward service (shared) and vLLM on a given model."""

import contextlib
import time

import pytest

from cfpo.clients.generation import GenerationClient
from cfpo.clients.reward import RewardClient
from tests.servers import free_port, python_module, running


@pytest.fixture(scope="package")
def rewards(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("reward-logs") / "reward.log"
    with running(python_module("services.reward", "--port", str(port)), f"http://127.0.0.1:{port}/health", log=log):
        client = RewardClient(f"http://127.0.0.1:{port}")
        yield client
        client.close()


@contextlib.contextmanager
def generation_service(model_dir, log, *, timeout: float = 240.0):
    """``python -m services.generation`` on ``model_dir``; yields a client and the seconds vLLM took to start."""
    port = free_port()
    argv = python_module("services.generation", "--model", str(model_dir), "--port", str(port))
    started = time.perf_counter()
    with running(argv, f"http://127.0.0.1:{port}/health", log=log, timeout=timeout):
        client = GenerationClient(f"http://127.0.0.1:{port}")
        try:
            yield client, time.perf_counter() - started
        finally:
            client.close()
