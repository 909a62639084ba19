"""The rollout worker's settings (``cfpo serve rollout``), validated once at start-up."""

from __future__ import annotations

from pydantic import Field

from cfpo.config import environment
from cfpo.entrypoint import DEFAULT_REWARD_URL, RunWorkerSettings


class RolloutSettings(RunWorkerSettings):
    reward_url: str = Field(
        default_factory=environment("CFPO_REWARD_URL", DEFAULT_REWARD_URL),
        description="reward service ($CFPO_REWARD_URL)",
    )
