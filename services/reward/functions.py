"""The registry of reward functions, by name, and the built-in ones.

A reward function takes one ``ScoreInput`` and returns ``(value, info)``: a finite float and a JSON-able dict
that goes into the item's details (e.g. the answer it found). Functions run in the verifier pool's worker
processes, never in the server, so they may be slow or get stuck: the pool enforces the per-item timeout.
Register more with ``@reward`` in a module named by the ``plugins`` setting.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from math_verify import parse, verify

from services.reward.answers import clean, final_answer, last_boxed

# The timeouts of math-verify use signal.alarm (main thread only); they are off here because the pool kills a
# stuck worker instead. Its warning saying so would repeat in every new worker.
logging.getLogger("math_verify").setLevel(logging.ERROR)


@dataclass(frozen=True)
class ScoreInput:
    prompt: str
    completion: str
    reference: str
    metadata: dict[str, Any] = field(default_factory=dict)


RewardFn = Callable[[ScoreInput], tuple[float, dict[str, Any]]]


@dataclass(frozen=True)
class RewardFunction:
    name: str
    fn: RewardFn
    description: str


REGISTRY: dict[str, RewardFunction] = {}


def reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register a reward function under ``name``; its docstring is its description in the API docs."""

    def register(fn: RewardFn) -> RewardFn:
        if name in REGISTRY:
            raise ValueError(f"reward function {name!r} is already registered")
        REGISTRY[name] = RewardFunction(name, fn, inspect.getdoc(fn) or "")
        return fn

    return register


def call(name: str, item: ScoreInput) -> tuple[float, dict[str, Any]]:
    """Run one function (in a pool worker) and check its result can go out as JSON."""
    value, info = REGISTRY[name].fn(item)
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} returned {value}, not a finite reward")
    if not isinstance(info, dict):
        raise TypeError(f"{name} returned {type(info).__name__} details, not a dict")
    json.dumps(info, allow_nan=False)  # raises here, for this item, rather than failing the whole response
    return value, info


@reward("math_equivalence")
def math_equivalence(item: ScoreInput) -> tuple[float, dict[str, Any]]:
    """1 if the completion's final answer (the last \\boxed{}, else "the answer is ...", "= ...", else its last
    number) equals the reference mathematically (math-verify: 1/2 = 0.5 = \\frac{1}{2}), else 0. When the
    reference is a number the answer must be one too: an unevaluated expression ("5 + 4") scores 0."""
    gold = parse(item.reference, parsing_timeout=None)
    if not gold:
        raise ValueError(f"reference: no mathematical answer found in {item.reference[:80]!r}")
    answer = parse(item.completion, parsing_timeout=None)
    correct = bool(answer) and verify(gold, answer, timeout_seconds=None)
    info = {"answer": str(answer[-1]) if answer else None}
    if correct and _is_number(gold) and not _is_number(answer):
        # "5 + 4" equals 9, but restating the question's expression is not answering it; a policy would learn to.
        return 0.0, {**info, "refused": "a number is expected, not an expression"}
    return float(correct), info


def _is_number(parsed: list) -> bool:
    """Whether math-verify's parse is a single numeric value (``9``, ``\\frac{18}{2}`` -> 9), not ``4 + 5``."""
    return bool(getattr(parsed[0], "is_Number", False))


@reward("exact_match")
def exact_match(item: ScoreInput) -> tuple[float, dict[str, Any]]:
    """1 if the final answer (the last \\boxed{}, else what follows "answer is" or "answer:", else the whole
    completion), trimmed of spaces, $ and a closing full stop, equals the reference, else 0. Case-sensitive."""
    answer = final_answer(item.completion)
    return float(answer == clean(item.reference)), {"answer": answer}


@reward("format")
def format_(item: ScoreInput) -> tuple[float, dict[str, Any]]:
    """1 if the completion states its answer in a non-empty \\boxed{...}, else 0."""
    return float(bool(last_boxed(item.completion))), {}


DEFAULT_LENGTH_BUDGET = 4000


@reward("length_penalty")
def length_penalty(item: ScoreInput) -> tuple[float, dict[str, Any]]:
    """0 up to a budget of characters (the item's metadata "length_budget", default 4000), then falling
    linearly to -1 at twice the budget: discourages rambling without punishing answers that fit."""
    budget = item.metadata.get("length_budget", DEFAULT_LENGTH_BUDGET)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise ValueError(f"metadata.length_budget: must be a positive whole number of characters, not {budget!r}")
    over = max(0, len(item.completion) - budget)
    return -min(1.0, over / budget), {"chars": len(item.completion)}


@reward("digit_share")
def digit_share(item: ScoreInput) -> tuple[float, dict[str, Any]]:
    """The share of the completion's non-blank characters that are digits (0 for a blank completion): a dense
    toy reward that even a random model improves on within a few steps, for smoke tests and tiny demos."""
    visible = [c for c in item.completion if not c.isspace()]
    digits = sum(c.isdigit() for c in visible)
    return (digits / len(visible) if visible else 0.0), {"digits": digits, "chars": len(visible)}
