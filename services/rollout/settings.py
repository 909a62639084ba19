"""The rollout worker's settings (``cfpo serve rollout``), validated once at start-up."""

from __future__ import annotations

from pydantic import Field

from cfpo.config import environment
from cfpo.entrypoint import DEFAULT_REWARD_URL, RunWorkerSettings
from cfpo.queue import SLOT_LEASE_FIELD


class RolloutSettings(RunWorkerSettings):
    reward_url: str = Field(
        default_factory=environment("CFPO_REWARD_URL", DEFAULT_REWARD_URL),
        description="reward service ($CFPO_REWARD_URL)",
    )
    slot_lease_s: float = SLOT_LEASE_FIELD
    run_retry_s: float = Field(
        10.0, gt=0, description="seconds before working again on a run whose work failed (worker mode)"
    )
