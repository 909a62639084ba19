"""The rollout sample: what generation, reward and the rollout worker hand to the learner.

One sample is one completion of one prompt, with the log-probabilities of its tokens under the distribution
that sampled them and the policy versions that produced it. Malformed samples are refused here, at the edge.
"""

from __future__ import annotations

import math

from pydantic import Field, model_validator

from cfpo.config import StrictModel


class Sample(StrictModel):
    prompt_ids: list[int] = Field(min_length=1)
    completion_ids: list[int] = Field(min_length=1, description="an empty completion carries no signal")
    behaviour_logprobs: list[float] = Field(description="log-prob of each completion token when it was sampled")
    advantage: float
    reward: float = 0.0
    completion_mask: list[bool] | None = Field(None, description="tokens to train on; default all")
    # Required: a default would make a completion of unknown origin look fresh, and staleness is what is measured.
    min_version: int = Field(ge=0, description="oldest policy version that generated this completion")
    max_version: int = Field(ge=0, description="newest policy version (differs if weights changed mid-sample)")

    @model_validator(mode="after")
    def _consistent(self) -> Sample:
        n = len(self.completion_ids)
        if len(self.behaviour_logprobs) != n:
            raise ValueError(f"behaviour_logprobs: {len(self.behaviour_logprobs)} values for {n} completion tokens")
        if self.completion_mask is not None and len(self.completion_mask) != n:
            raise ValueError(f"completion_mask: {len(self.completion_mask)} values for {n} completion tokens")
        if not all(math.isfinite(x) and x <= 0 for x in self.behaviour_logprobs):
            raise ValueError("behaviour_logprobs: every value must be a finite log-probability (<= 0)")
        if not math.isfinite(self.advantage):
            raise ValueError("advantage: must be finite")
        if self.max_version < self.min_version:
            raise ValueError("max_version: must not be below min_version")
        if min(self.prompt_ids + self.completion_ids) < 0:
            raise ValueError("prompt_ids/completion_ids: token ids must be >= 0")
        return self
