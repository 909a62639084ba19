"""Starting the project's real servers as subprocesses for tests, on loopback, and stopping them cleanly."""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from cfpo.cli.stack import stop_process_group


def stack_port_offset() -> int:
    """A random offset for a whole stack's default ports (6379 ... 9102) that keeps every one of them below Linux's
    ephemeral range (32768 and up), where an outgoing connection may hold a port just as a server binds it."""
    return random.randrange(10_000, 23_500, 100)


def interruptible() -> None:
    """A ``preexec_fn`` giving the child Ctrl-C's and hang-up's default actions, as in a terminal: a test run started
    as a background job (``cmd &``) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt; one
    started under ``nohup`` inherits SIGHUP ignored, which ``cfpo up`` honours by staying up."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(argv: list[str], health_url: str, *, log: Path, timeout: float = 240.0, env: dict | None = None):
    """Run ``argv`` (in its own process group, with ``env`` as its whole environment, default this process's) until
    ``health_url`` answers 200; stop it afterwards."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        _wait_healthy(process, health_url, timeout, log)
        yield process
    finally:
        stop(process)


def _wait_healthy(process: subprocess.Popen, url: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}; log tail:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f} s; log tail:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen, grace: float = 30.0) -> None:
    stop_process_group(process, grace)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
