"""The verifier pool: reward functions run in worker processes that are killed when they overrun.

A thread cannot stop sympy stuck in C code, and math-verify's own timeouts (signal.alarm) only work in a main
thread, so the timeout is enforced from outside: pebble kills the worker and starts a fresh one. Workers fork
from a forkserver that has already imported the functions (a new worker is ready in milliseconds) rather than
from the server, whose threads (the event loop, Ray's) make forking it unsafe.
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import signal
from dataclasses import dataclass, field
from typing import Any, Literal

from pebble import ProcessExpired, ProcessPool

from services.reward import functions


@dataclass(frozen=True)
class Outcome:
    kind: Literal["ok", "error", "timeout"]
    value: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _start_worker(plugins: tuple[str, ...]) -> None:
    # pebble's SIGTERM handler is Python code, which never runs while a worker is stuck in C: the default
    # action ends the process at once instead of after pebble's 3 s wait for SIGKILL.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for module in plugins:
        importlib.import_module(module)


class VerifierPool:
    """A warm pool of ``size`` workers; ``run`` calls one reward function on one item under ``timeout`` s."""

    def __init__(self, size: int, timeout: float, plugins: list[str]):
        self.timeout = timeout
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([functions.__name__, *plugins])
        self._pool = ProcessPool(size, initializer=_start_worker, initargs=(tuple(plugins),), context=context)

    async def warm(self) -> None:
        """Start the workers now rather than on the first request."""
        outcome = await self.run("format", functions.ScoreInput("", "\\boxed{1}", "1"))
        if outcome.kind != "ok":
            raise RuntimeError(f"verifier pool failed to start: {outcome.error}")

    @property
    def alive(self) -> bool:
        return self._pool.active

    async def run(self, name: str, item: functions.ScoreInput) -> Outcome:
        try:
            future = self._pool.schedule(functions.call, (name, item), timeout=self.timeout)
            value, info = await asyncio.wrap_future(future)
        except TimeoutError:
            return Outcome("timeout", error=f"{name}: timed out after {self.timeout:g} s; its worker was killed")
        except ProcessExpired as error:
            return Outcome("error", error=f"{name}: its worker died (exit code {error.exitcode})")
        except Exception as error:  # the function's own exception re-raised by pebble, or a pool that has broken
            return Outcome("error", error=f"{name}: {type(error).__name__}: {error}")
        return Outcome("ok", value, info)

    def close(self) -> None:
        self._pool.stop()
        self._pool.join()
