"""A real redis-server for tests: on a free loopback port, in a temporary directory, without persistence unless
asked (the restart scenario)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.servers import free_port, stop


@contextlib.contextmanager
def redis_server(directory: Path, timeout: float = 10.0) -> Iterator[str]:
    """Run ``redis-server`` in ``directory`` until it answers PING, yield its URL, stop it afterwards."""
    port = free_port()
    process = start_redis(directory, port, timeout=timeout)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process, grace=10.0)


def start_redis(directory: Path, port: int, *, durable: bool = False, timeout: float = 10.0) -> subprocess.Popen:
    """A ``redis-server`` on ``port`` that answers PING. ``durable``: an append-only file fsynced on every write,
    which a server started again in ``directory`` replays (a restart loses nothing acknowledged)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH (scripts/setup.sh installs Debian's redis-server)")
    log = directory / "redis.log"
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory), "--save", "", *persistence]
    process = subprocess.Popen(
        [*argv, "--logfile", str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait_ready(process, f"redis://127.0.0.1:{port}/0", timeout, log)
    except BaseException:
        stop(process, grace=10.0)
        raise
    return process


def _wait_ready(process: subprocess.Popen, url: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    with redis.Redis.from_url(url, socket_connect_timeout=1) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log.read_text()[-3000:] if log.exists() else "(no log)"
                raise RuntimeError(f"redis-server exited with {process.returncode}; log tail:\n{tail}")
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    return
            time.sleep(0.05)
    raise TimeoutError(f"redis-server at {url} did not answer PING within {timeout:.0f} s")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """One Redis for the whole session; tests keep apart by using their own keys (e.g. their own run id)."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url
