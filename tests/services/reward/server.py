"""A real reward server for the tests: ``python -m services.reward`` in a subprocess on a free loopback port."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests import REPO_ROOT

# The settings the service tests rely on: a short timeout for the hanging verifier, small limits to hit.
TEST_SERVER_ARGS = [
    "--plugins",
    "tests.services.reward.plugins",
    "--item-timeout",
    "1",
    "--pool-size",
    "2",
    "--max-items",
    "16",
    "--max-completion-chars",
    "2000",
    "--max-body-mb",
    "0.25",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A service process in its own session, so that stopping it can be checked to leave nothing behind."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.reward", "--port", str(self.port), *args],
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log.read_text()}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as a process manager would send; returns the exit status."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise

    def processes(self) -> set[int]:
        """Live processes of the server's session: itself, its verifier workers, Ray's daemons and actors."""
        pids = set()
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and os.getsid(int(entry.name)) == self.process.pid:
                    pids.add(int(entry.name))
            except ProcessLookupError:
                pass
        return pids


def item(completion: str, reference: str, task: str = "math", **extra) -> dict:
    return {"prompt": "What is it?", "completion": completion, "reference": reference, "task": task, **extra}


def wait_for(condition, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
