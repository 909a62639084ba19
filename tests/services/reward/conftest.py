"""Fixtures: real reward servers shared by the HTTP tests (one with the misbehaving test plugins)."""

import httpx
import pytest

from tests.services.reward.server import TEST_SERVER_ARGS, Server, wait_for


def _serve(args: list[str], log):
    srv = Server(args, log)
    try:
        srv.wait_ready(timeout=60)
        yield srv
    finally:
        srv.stop()
    assert wait_for(lambda: not srv.processes(), timeout=10), "verifier workers outlived the server"


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    yield from _serve(TEST_SERVER_ARGS, tmp_path_factory.mktemp("reward") / "server.log")


@pytest.fixture(scope="session")
def default_server(tmp_path_factory):
    """Default settings, as users start it."""
    yield from _serve([], tmp_path_factory.mktemp("reward") / "default-server.log")


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http
