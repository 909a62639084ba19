"""The reward service's settings, validated once at start-up (command line or YAML file)."""

from __future__ import annotations

import importlib
from typing import Annotated

from pydantic import Field, model_validator

from cfpo.config import StrictModel
from services.reward.functions import REGISTRY

Weight = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # true or "1" is no weight
Weights = dict[str, Weight]

DEFAULT_TASKS: dict[str, Weights] = {
    "math": {"math_equivalence": 1.0},
    "arithmetic": {"math_equivalence": 1.0},
    "exact_match": {"exact_match": 1.0},
    "digits": {"digit_share": 1.0},
}


class RewardSettings(StrictModel):
    host: str = Field("127.0.0.1", min_length=1, description="address to listen on (loopback by default)")
    port: int = Field(8011, ge=1, le=65535)
    item_timeout: float = Field(
        5.0, gt=0, description="seconds one reward function may take on one item before its worker is killed"
    )
    pool_size: int = Field(2, ge=1, description="verifier worker processes (per replica under Ray)")
    max_items: int = Field(1024, ge=1, description="items per request")
    max_completion_chars: int = Field(32_000, ge=1, description="characters per completion")
    max_body_mb: float = Field(64.0, gt=0, description="request body size limit in MiB (413 beyond it)")
    tasks: dict[str, Weights] = Field(
        DEFAULT_TASKS, min_length=1, description="task name -> {reward function: weight}; an item's task picks one"
    )
    plugins: list[str] = Field(
        [], description="modules to import at start-up that register more reward functions with @reward"
    )
    ray: bool = Field(False, description="run as Ray Serve replicas instead of one uvicorn process")
    replicas: int = Field(1, ge=1, description="Ray Serve replicas (with --ray)")
    ray_address: str | None = Field(
        None, description="join this Ray cluster (e.g. 'auto') instead of starting a local one (with --ray)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> RewardSettings:
        if not self.ray and (self.replicas > 1 or self.ray_address):
            raise ValueError("replicas/ray_address: only apply under Ray; add --ray (ray: true)")
        for module in self.plugins:
            try:
                importlib.import_module(module)
            except Exception as error:  # any failure to import means the setting is unusable
                raise ValueError(f"plugins: cannot import {module!r}: {error}") from None
        for task, weights in self.tasks.items():
            if not weights:
                raise ValueError(f"tasks.{task}: needs at least one reward function")
            unknown = sorted(set(weights) - set(REGISTRY))
            if unknown:
                raise ValueError(f"tasks.{task}: unknown reward function(s) {unknown}; known: {sorted(REGISTRY)}")
        return self
