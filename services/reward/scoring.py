"""Composing an item's reward from its weighted reward functions, each run in the verifier pool."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from cfpo.clients.reward import ItemReward
from cfpo.metrics import REWARD_FUNCTION_CALLS, REWARD_ITEMS, Recorder
from services.reward.functions import ScoreInput
from services.reward.pool import VerifierPool


async def score_items(request: Any, tasks: dict[str, dict[str, float]], pool: VerifierPool, recorder: Recorder):
    """One reward per item, in order. Weights: the item's override, else the request's, else its task's."""
    recorder.inc(REWARD_ITEMS, len(request.items))
    scored = (
        _score_item(item, item.rewards or request.rewards or tasks[item.task], pool, recorder) for item in request.items
    )
    return list(await asyncio.gather(*scored))


async def _score_item(item: Any, weights: dict[str, float], pool: VerifierPool, recorder: Recorder) -> ItemReward:
    data = ScoreInput(item.prompt, item.completion, item.reference, item.metadata)
    outcomes = await asyncio.gather(*(pool.run(name, data) for name in weights))
    scores: dict[str, dict[str, Any]] = {}
    errors = []
    for (name, weight), outcome in zip(weights.items(), outcomes):
        recorder.inc(REWARD_FUNCTION_CALLS, function=name, outcome=outcome.kind)
        scores[name] = {**outcome.info, "weight": weight, "value": outcome.value}
        if outcome.error:
            scores[name]["error"] = outcome.error
            errors.append(outcome.error)
    reward = sum(weights[name] * score["value"] for name, score in scores.items())
    if not math.isfinite(reward):
        errors.append(f"the weighted sum {reward} is not finite")
    details: dict[str, Any] = {"task": item.task, "scores": scores}
    if errors:  # a failed verifier must not hand out the other functions' partial credit
        details["error"] = "; ".join(errors)
        reward = 0.0
    return ItemReward(reward=reward, details=details)
