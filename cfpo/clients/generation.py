"""Client of the generation service (vLLM started by ``cfpo serve generation``), for rollout and learner.

Sampling goes through vLLM's token-in/token-out route, so the prompt ids the learner trains on are exactly
the ids the model saw, and every completion comes back with its token ids, their log-probs under the
distribution sampled (temperature applied, no top-k or top-p) and the weight versions that produced it.

Weight updates: pause (in-flight requests finish on the old weights) -> load the file in every worker ->
label the new version -> reset the prefix cache -> resume. A failed load leaves the old weights and version.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from cfpo.clients import lane_client

# vLLM labels output "default" until a version is set: that is the checkpoint the server started on.
INITIAL_VERSION_LABEL = "default"
RUN_SEPARATOR = "@"


# /pause?mode=wait returns once the requests in flight have finished: one admitted just before it may still decode
# every token up to max_tokens. The former fixed 120 s covers the pause, a weight load and a short request; each
# token adds a decode step under full load with room to spare.
PAUSE_BASE_S = 120.0
PAUSE_PER_TOKEN_S = 0.1


def pause_timeout(max_tokens: int) -> float:
    """Seconds to let ``/pause`` (and the weight update inside it) take, for completions of up to ``max_tokens``."""
    return PAUSE_BASE_S + PAUSE_PER_TOKEN_S * max_tokens


class GenerationError(RuntimeError):
    """The generation service refused or failed a request; the message says which and why."""


class WeightUpdateError(GenerationError):
    """A weight update failed; the server still serves the weights and version it had."""


@dataclass(frozen=True)
class PolicyVersion:
    """Which weights a server holds: a run's policy version (``run@number``), or the checkpoint it started on.

    The run is part of the label so that a worker of one run never takes output of another run's weights,
    left on a shared server, for its own version ``number``.
    """

    run: str | None
    number: int

    @property
    def label(self) -> str:
        return str(self.number) if self.run is None else f"{self.run}{RUN_SEPARATOR}{self.number}"

    @classmethod
    def parse(cls, label: str) -> PolicyVersion:
        if label == INITIAL_VERSION_LABEL:
            return cls(None, 0)
        run, _, number = label.rpartition(RUN_SEPARATOR)
        try:
            return cls(run or None, int(number))
        except ValueError:
            raise GenerationError(f"weight version {label!r} is not [run@]number") from None


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    min_version: int  # oldest policy version that produced any of its tokens
    max_version: int  # newest
    runs: tuple[str | None, ...]  # the runs whose weights produced it (one, unless a run's first push landed mid-way)


@dataclass(frozen=True)
class WeightUpdate:
    version: int
    seconds: float  # the update: from /pause until /resume returned
    bytes: int
    staging_seconds: float = 0.0  # writing the weights where the server reads them, before the update (its caller)

    @property
    def push_seconds(self) -> float:
        """What the push cost its caller: staging, then the update."""
        return self.staging_seconds + self.seconds


class GenerationClient:
    def __init__(self, base_url: str, *, timeout: float = 300.0):
        self.base_url = base_url.rstrip("/")
        self._http = lane_client(self.base_url, timeout)

    def close(self) -> None:
        self._http.close()

    def generate(
        self,
        prompt_ids: list[int],
        *,
        n: int = 1,
        temperature: float = 1.0,
        max_tokens: int = 64,
        seed: int | None = None,
        stop_token_ids: list[int] | None = None,
        timeout: float | None = None,
    ) -> list[Completion]:
        """``n`` completions of one prompt, sampled from softmax(logits / temperature) over the whole vocabulary."""
        sampling = {
            "n": n,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "logprobs": 0,
            "top_p": 1.0,
            "top_k": 0,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "seed": seed,
            "stop_token_ids": stop_token_ids or [],
        }
        body = {"token_ids": prompt_ids, "sampling_params": sampling}
        reply = self._post("/inference/v1/generate", json=body, timeout=timeout or httpx.USE_CLIENT_DEFAULT)
        return [self._completion(choice) for choice in sorted(reply["choices"], key=lambda c: c["index"])]

    @staticmethod
    def _completion(choice: dict) -> Completion:
        spans = choice.get("weight_versions") or [{"version": INITIAL_VERSION_LABEL}]
        versions = [PolicyVersion.parse(span["version"]) for span in spans]
        return Completion(
            token_ids=choice["token_ids"],
            logprobs=[token["logprob"] for token in choice["logprobs"]["content"]],
            finish_reason=choice.get("finish_reason") or "stop",
            min_version=min(v.number for v in versions),
            max_version=max(v.number for v in versions),
            runs=tuple(dict.fromkeys(v.run for v in versions)),
        )

    def version(self) -> PolicyVersion:
        return PolicyVersion.parse(self._get("/weight_info")["weight_version"])

    def update_weights(
        self, path: str | Path, version: int, *, run: str | None = None, timeout: float = 120.0
    ) -> WeightUpdate:
        """Load a safetensors file (every tensor of the model) as ``run``'s policy ``version``; blocks until served."""
        started = time.perf_counter()
        with self.paused(timeout=timeout):
            reply = self._post(
                "/collective_rpc",
                json={"method": "cfpo_update_weights", "args": [str(Path(path).resolve())], "timeout": timeout},
                timeout=timeout + 5,
                failure=WeightUpdateError,
                # vLLM drops the connection after a failed call; a pooled connection would fail the resume.
                headers={"Connection": "close"},
            )
            self.label_version(PolicyVersion(run, version))
        loaded = reply["results"][0]
        return WeightUpdate(version=version, seconds=time.perf_counter() - started, bytes=int(loaded["bytes"]))

    @contextlib.contextmanager
    def paused(self, *, timeout: float = 120.0) -> Iterator[None]:
        """Hold generation while weights change: requests in flight finish on the old weights, new ones wait.

        The server resumes whatever happens inside, a failed or timed-out ``/pause`` included (it may have paused
        all the same): a failed push leaves it serving its old weights, never paused.
        """
        try:
            self._post("/pause", params={"mode": "wait"}, timeout=timeout)
            yield
        finally:
            self._post("/resume")

    def world_size(self) -> int:
        """How many workers the server has (tensor x pipeline x data parallel): its share of an NCCL group."""
        return int(self._get("/get_world_size")["world_size"])

    def label_version(self, version: PolicyVersion) -> None:
        """Name the weights now loaded (call while paused) and drop prefix-cache entries of the old ones."""
        self._post("/update_weight_version", json={"new_version": version.label})
        self._post("/reset_prefix_cache")

    def _get(self, path: str) -> dict:
        return self._checked(self._request("GET", path), path, GenerationError)

    def _post(self, path: str, *, failure: type[GenerationError] = GenerationError, **kwargs) -> dict:
        return self._checked(self._request("POST", path, **kwargs), path, failure)

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise GenerationError(f"{method} {self.base_url}{path}: timed out") from None
        except httpx.TransportError as error:
            raise GenerationError(f"{method} {self.base_url}{path}: {error}") from None

    @staticmethod
    def _checked(response: httpx.Response, path: str, failure: type[GenerationError]) -> dict:
        if response.status_code >= 400:
            raise failure(f"{path}: HTTP {response.status_code}: {_error_text(response)}")
        return response.json() if response.content else {}


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        error = body.get("error") or body.get("detail") or body
        if isinstance(error, dict):
            error = error.get("message", error)
        return str(error)[:2000]
    return str(body)[:500]


class GenerationPool:
    """Independent generation servers (each its own vLLM, with its own weight version) used as one.

    A rollout lane takes the server with the fewest lanes on it for a whole group: it checks *that* server's
    version before generating there, so admission control stays exact whichever server lags behind a push.
    """

    def __init__(self, urls: list[str], *, timeout: float = 300.0):
        if not urls:
            raise ValueError("generation_urls: give at least one generation server")
        self.clients = [GenerationClient(url, timeout=timeout) for url in urls]
        self._lanes = [0] * len(self.clients)
        self._next = 0  # ties go round the servers
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def least_busy(self) -> Iterator[GenerationClient]:
        with self._lock:
            order = [(self._next + i) % len(self.clients) for i in range(len(self.clients))]
            chosen = min(order, key=lambda i: self._lanes[i])
            self._lanes[chosen] += 1
            self._next = (chosen + 1) % len(self.clients)
        try:
            yield self.clients[chosen]
        finally:
            with self._lock:
                self._lanes[chosen] -= 1

    def close(self) -> None:
        for client in self.clients:
            client.close()
