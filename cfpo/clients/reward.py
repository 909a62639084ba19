"""Client of the reward service (``POST /v1/score``) and the shapes of what it scores and returns."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel, Field

from cfpo.clients import lane_client
from cfpo.config import StrictModel
from cfpo.tasks import Problem


class RewardError(RuntimeError):
    """The reward service refused or failed a whole request; the message says why."""


class ScoreItem(StrictModel):
    """One completion to score, as ``POST /v1/score`` takes it (the service narrows ``task`` and ``rewards`` to
    what it is configured with)."""

    prompt: str
    completion: str
    reference: str = Field(description="the expected answer")
    task: str = Field(description="picks the weighted reward functions (the service's tasks setting)")
    metadata: dict[str, Any] = Field({}, description="free-form; some functions read keys of it")
    rewards: dict[str, float] | None = Field(
        None, min_length=1, description="{reward function: weight} used instead of the task's combination"
    )

    @classmethod
    def answer(cls, problem: Problem, completion: str) -> ScoreItem:
        """A completion of ``problem``, to be checked against its reference."""
        return cls(
            prompt=problem.prompt,
            completion=completion,
            reference=problem.reference,
            task=problem.task,
            metadata=dict(problem.metadata),
        )


class ItemReward(BaseModel):
    reward: float = Field(description="weighted sum of the item's reward functions; 0 if any of them failed")
    details: dict[str, Any] = Field(
        description="task; per function its weight, value and what it found (e.g. answer); error if one failed"
    )


class RewardClient:
    def __init__(self, base_url: str, *, timeout: float = 120.0):
        self.base_url = base_url.rstrip("/")
        self._http = lane_client(self.base_url, timeout)

    def close(self) -> None:
        self._http.close()

    def functions(self) -> list[str]:
        """The names of the reward functions the service has (``GET /v1/functions``)."""
        try:
            response = self._http.get("/v1/functions")
            response.raise_for_status()
            return sorted(response.json()["functions"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
            raise RewardError(f"GET {self.base_url}/v1/functions: {str(error) or type(error).__name__}") from None

    def score(self, items: list[ScoreItem], *, rewards: dict[str, float] | None = None) -> list[ItemReward]:
        """One score per item, in order; ``rewards`` overrides the tasks' reward functions and weights."""
        body: dict[str, Any] = {"items": [item.model_dump(exclude_none=True) for item in items]}
        if rewards:
            body["rewards"] = rewards
        try:
            response = self._http.post("/v1/score", json=body)
        except httpx.HTTPError as error:
            raise RewardError(f"POST {self.base_url}/v1/score: {error!r}") from None
        if response.status_code != 200:
            raise RewardError(f"POST {self.base_url}/v1/score: HTTP {response.status_code}: {response.text[:1000]}")
        return [ItemReward.model_validate(r) for r in response.json()["rewards"]]
