"""Group advantage estimators: one group is the G completions of one prompt (advantages are not part of CFPO)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

AdvantageName = Literal["grpo", "rloo", "drgrpo"]
STD_FLOOR = 1e-6


def _std(rewards: list[float]) -> float:
    mean = sum(rewards) / len(rewards)
    return math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))


def is_zero_variance(rewards: list[float]) -> bool:
    """The one rule for a group that teaches nothing under group-relative advantages: its rewards' standard
    deviation is below ``STD_FLOOR`` (the rollout worker drops such groups; GRPO gives them zero advantages)."""
    return _std(rewards) < STD_FLOOR


def _grpo(rewards: list[float]) -> list[float]:
    """(R - mean) / std; a zero-variance group gets zero advantages, not a division by (almost) zero."""
    std = _std(rewards)
    if std < STD_FLOOR:  # is_zero_variance, with the std computed once
        return [0.0] * len(rewards)
    mean = sum(rewards) / len(rewards)
    return [(r - mean) / std for r in rewards]


def _rloo(rewards: list[float]) -> list[float]:
    """R_i minus the mean of the other G - 1 rewards (leave-one-out baseline)."""
    n, total = len(rewards), sum(rewards)
    if n < 2:
        raise ValueError("rewards: rloo needs at least 2 samples per group")
    return [r - (total - r) / (n - 1) for r in rewards]


def _drgrpo(rewards: list[float]) -> list[float]:
    """Dr.GRPO: R - mean, without the std normalisation that favours easy and hard prompts."""
    mean = sum(rewards) / len(rewards)
    return [r - mean for r in rewards]


ESTIMATORS: dict[str, Callable[[list[float]], list[float]]] = {"grpo": _grpo, "rloo": _rloo, "drgrpo": _drgrpo}


def group_advantages(name: str, rewards: list[float]) -> list[float]:
    if name not in ESTIMATORS:
        raise ValueError(f"advantage: unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
    if not rewards:
        raise ValueError("rewards: a group needs at least one reward")
    return ESTIMATORS[name](rewards)
