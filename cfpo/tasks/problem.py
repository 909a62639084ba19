"""The problem record every task yields: what the rollout worker prompts with and the reward service checks."""

from __future__ import annotations

from pydantic import Field, JsonValue

from cfpo.config import StrictModel


class Problem(StrictModel):
    """One prompt and its reference answer; the same shape whatever task produced it."""

    id: str = Field(min_length=1, description="stable across runs, so results and rewards can be joined on it")
    prompt: str = Field(min_length=1, description="the user message, before any chat template")
    reference: str = Field(min_length=1, description="the answer the verifier compares against, e.g. '42', '-7'")
    task: str = Field(min_length=1, description="which task produced it ('arithmetic', 'math', ...)")
    metadata: dict[str, JsonValue] = Field(default_factory=dict, description="where it came from, its difficulty")
