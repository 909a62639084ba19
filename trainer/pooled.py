"""Statistics that merge exactly over micro-batches and ranks, because they carry the sums they are computed from.

A token mean merges exactly as the token-weighted mean of its micro-batches' means; a standard deviation, an
effective sample size, or a mean over responses weighted by tokens does not. A ``Pooled`` value keeps its count,
sum and sum of squares, and ``Pooled.merge`` adds those up, so an optimizer step split into uneven micro-batches
on several ranks reports what one forward over the whole step would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from torch import Tensor

Statistic = Literal["mean", "std", "ess"]


class Pooled(float):
    """A statistic's value (a float, so metric dicts stay ``dict[str, float]`` for every reader) that also holds
    its sums. ``std`` is the population standard deviation; ``ess`` the normalised effective sample size
    (sum w)^2 / (N sum w^2) in (0, 1]. With no values: 0 for mean and std, 1 for ess (nothing is degenerate)."""

    __slots__ = ("statistic", "count", "total", "total_sq")
    statistic: Statistic
    count: float
    total: float
    total_sq: float

    def __new__(cls, statistic: Statistic, count: float, total: float, total_sq: float) -> Pooled:
        made = super().__new__(cls, _value(statistic, count, total, total_sq))
        made.statistic, made.count, made.total, made.total_sq = statistic, count, total, total_sq
        return made

    @classmethod
    def of(cls, statistic: Statistic, values: Tensor) -> Pooled:
        """``statistic`` of a 1-D tensor, summed in float64 (squared ratios reach e^40)."""
        values = values.detach().double()
        return cls(statistic, float(values.numel()), float(values.sum()), float((values * values).sum()))

    @classmethod
    def merge(cls, parts: Sequence[float]) -> Pooled:
        """The statistic over all of the parts' values; every part must be a ``Pooled`` of that statistic."""
        pooled = [part for part in parts if isinstance(part, Pooled)]
        statistics = {part.statistic for part in pooled}
        if len(pooled) != len(parts) or len(statistics) != 1:
            raise ValueError(f"parts: not Pooled values of one statistic: {parts!r}")
        return cls(
            statistics.pop(),
            sum(part.count for part in pooled),
            sum(part.total for part in pooled),
            sum(part.total_sq for part in pooled),
        )

    def __reduce__(self) -> tuple[type[Pooled], tuple[Statistic, float, float, float]]:
        """Pickled with its sums: ranks gather each other's micro-batch metrics as pickles."""
        return Pooled, (self.statistic, self.count, self.total, self.total_sq)


def _value(statistic: Statistic, count: float, total: float, total_sq: float) -> float:
    if statistic == "ess":
        return total * total / (count * total_sq) if count and total_sq else 1.0
    if not count:
        return 0.0
    mean = total / count
    if statistic == "mean":
        return mean
    return math.sqrt(max(total_sq / count - mean * mean, 0.0))  # rounding can leave a tiny negative variance
