"""Client of the reward service (``POST /v1/score``), for the rollout workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx


class RewardError(RuntimeError):
    """The reward service refused or failed a whole request; the message says why."""


@dataclass(frozen=True)
class ScoreItem:
    prompt: str
    completion: str
    reference: str
    task: str
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class Score:
    reward: float
    details: dict[str, Any]


class RewardClient:
    def __init__(self, base_url: str, *, timeout: float = 120.0):
        self.base_url = base_url.rstrip("/")
        # No connection cap: a rollout worker's lanes each hold one request in flight.
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout,
                                  limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))

    def close(self) -> None:
        self._http.close()

    def score(self, items: list[ScoreItem], *, rewards: dict[str, float] | None = None) -> list[Score]:
        """One score per item, in order; ``rewards`` overrides the tasks' reward functions and weights."""
        body: dict[str, Any] = {"items": [
            {"prompt": i.prompt, "completion": i.completion, "reference": i.reference, "task": i.task,
             "metadata": i.metadata or {}}
            for i in items
        ]}
        if rewards:
            body["rewards"] = rewards
        try:
            response = self._http.post("/v1/score", json=body)
        except httpx.HTTPError as error:
            raise RewardError(f"POST {self.base_url}/v1/score: {error!r}") from None
        if response.status_code != 200:
            raise RewardError(f"POST {self.base_url}/v1/score: HTTP {response.status_code}: {response.text[:1000]}")
        return [Score(float(r["reward"]), r.get("details", {})) for r in response.json()["rewards"]]
