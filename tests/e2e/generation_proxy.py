"""A recording HTTP proxy in front of the real vLLM server, for the rollout concurrency tests.

It forwards every request unchanged and records when each generation request starts and ends, so a test can
see how many a rollout worker had in flight at once. It can also fail chosen generation requests (HTTP 503
after a delay), lose vLLM's reply to the n-th request to a path (``lose_reply``: the server did the work, the
caller sees a 502: a weight update failing half-way), or run a test's code around one (``around_generate``: say,
change the served weights between a worker's admission check and its request): fault injectors, the one fake here,
because a real vLLM server cannot be made to fail one request of several, or a race to land, on demand.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

GENERATE_PATH = "/inference/v1/generate"


@dataclass
class GenerateCall:
    body: bytes
    started: float
    ended: float = float("inf")
    failed: bool = False


@dataclass
class GenerationProxy:
    upstream: str
    fail_first: int = 0  # fail this many generation requests (the first ones to arrive)
    fail_after_s: float = 0.0  # holding each failed request this long first
    # entered with each generation request's JSON body before it is forwarded, left once vLLM has answered
    around_generate: Callable[[dict], AbstractContextManager] = lambda body: contextlib.nullcontext()
    lose_reply: dict[str, int] = field(default_factory=dict)  # path -> which of its requests (1: the first) loses it
    lost: list[str] = field(default_factory=list)  # the paths whose replies were lost, in order
    _requests: Counter[str] = field(default_factory=Counter)
    calls: list[GenerateCall] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> str:
        proxy = self
        client = httpx.Client(
            base_url=self.upstream,
            timeout=300,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        )

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._forward()

            def do_POST(self) -> None:
                self._forward()

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                call = proxy._begin(body) if self.path.startswith(GENERATE_PATH) else None
                if call is not None and call.failed:
                    time.sleep(proxy.fail_after_s)
                    status, content = 503, b'{"error": "injected fault"}'
                else:
                    around = proxy.around_generate(json.loads(body)) if call else contextlib.nullcontext()
                    with around:
                        reply = client.request(
                            self.command,
                            self.path,
                            content=body,
                            headers={"Content-Type": self.headers.get("Content-Type", "")},
                        )
                    status, content = reply.status_code, reply.content
                    if proxy._lose(self.path):
                        status, content = 502, b'{"error": "injected fault: the reply was lost"}'
                if call is not None:
                    call.ended = time.monotonic()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args) -> None:
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _begin(self, body: bytes) -> GenerateCall:
        with self._lock:
            call = GenerateCall(body, time.monotonic(), failed=len(self.calls) < self.fail_first)
            self.calls.append(call)
            return call

    def _lose(self, path: str) -> bool:
        route = path.split("?")[0]
        with self._lock:
            self._requests[route] += 1
            if self._requests[route] != self.lose_reply.get(route):
                return False
            self.lost.append(route)
            return True

    def max_in_flight(self) -> int:
        """The most generation requests open at the same moment."""
        events = sorted(
            [(c.started, 1) for c in self.calls] + [(c.ended, -1) for c in self.calls],
            key=lambda event: (event[0], event[1]),
        )
        open_now = peak = 0
        for _, change in events:
            open_now += change
            peak = max(peak, open_now)
        return peak


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The learner's held-out evaluation opens many connections at once; the default backlog of 5 is the suspect in a
    # connection reset seen once in CI (tests/faults/test_weight_push_failed.py).
    request_queue_size = 128
