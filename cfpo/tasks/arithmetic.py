"""The built-in arithmetic task: seeded integer expressions with exact answers, for runs that need no data files.

Problems are random binary trees over small integers, drawn from one seeded stream; a hash of the expression
puts each one in train or eval, so a held-out expression is never a training prompt under any seed.

``ArithmeticTask.capacity`` says how many distinct problems of a split ``load`` supplies, without drawing them:
``load`` refuses a size above it before drawing, and the control API refuses such a run at submit with the same
words (``shortfall``), so the two cannot disagree.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import math
import operator
import random
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, WithJsonSchema, field_validator

from cfpo.config import StrictModel
from cfpo.tasks.problem import Problem, Split, in_split, split_key


@dataclass(frozen=True)
class Level:
    operands: int
    low: int
    high: int
    operators: str


LEVELS: dict[int, Level] = {
    1: Level(operands=2, low=0, high=9, operators="+"),  # one-digit sums: 100 problems in all
    2: Level(operands=2, low=10, high=99, operators="+-"),  # two-digit sums and differences
    3: Level(operands=3, low=2, high=20, operators="+-*"),  # products, parentheses
    4: Level(operands=3, low=10, high=999, operators="+-*"),  # the same with up to three-digit numbers
    5: Level(operands=4, low=10, high=999, operators="+-*"),  # four operands
}

_LEVEL_SCHEMA = {"type": "integer", "enum": sorted(LEVELS)}
# difficulty as the schema states it: one level, or several (_one_or_many, _known_levels)
_DIFFICULTY_SCHEMA = WithJsonSchema(
    {"anyOf": [_LEVEL_SCHEMA, {"type": "array", "items": _LEVEL_SCHEMA, "minItems": 1}], "default": [2]}
)

DEFAULT_TEMPLATE = "What is {expression}? Give the final answer as an integer in \\boxed{}."
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul}
SIZE_LIMITS: dict[Split, int] = {"train": 10_000_000, "eval": 100_000}  # the most train_size / eval_size admit
# A level with at most this many expressions is counted exactly, by enumerating it once per process (level 3,
# the largest such, takes about half a second); larger ones (4, 5) are counted by a bound on what draws find.
ENUMERABLE = 200_000


def random_expression(rng: random.Random, level: Level) -> tuple[str, int]:
    """An expression of ``level`` and its exact value; inner nodes are parenthesised, so the text is unambiguous."""

    def build(operands: int, outermost: bool) -> tuple[str, int]:
        if operands == 1:
            value = rng.randint(level.low, level.high)
            return str(value), value
        left_operands = rng.randint(1, operands - 1)
        left, left_value = build(left_operands, False)
        right, right_value = build(operands - left_operands, False)
        op = rng.choice(level.operators)
        text = f"{left} {op} {right}"
        return (text if outermost else f"({text})"), _APPLY[op](left_value, right_value)

    return build(level.operands, True)


def level_size(level: Level) -> int:
    """How many distinct expressions ``level`` has: tree shapes (a Catalan number) x operators x operand values."""
    n = level.operands
    shapes = math.comb(2 * (n - 1), n - 1) // n
    return shapes * len(level.operators) ** (n - 1) * (level.high - level.low + 1) ** n


def expressions(level: Level) -> Iterator[tuple[str, int]]:
    """Every expression of ``level`` once, with its value, in a fixed order; the texts ``random_expression`` makes."""
    values = range(level.low, level.high + 1)
    for shape in _shapes(level.operands):
        for ops in itertools.product(level.operators, repeat=level.operands - 1):
            for leaves in itertools.product(values, repeat=level.operands):
                yield _fill(shape, iter(leaves), iter(ops), True)


Shape = tuple["Shape", "Shape"] | None  # a binary tree: None is an operand


def _shapes(operands: int) -> Iterator[Shape]:
    if operands == 1:
        yield None
        return
    for left in range(1, operands):
        for left_shape in _shapes(left):
            for right_shape in _shapes(operands - left):
                yield (left_shape, right_shape)


def _fill(shape: Shape, leaves: Iterator[int], ops: Iterator[str], outermost: bool) -> tuple[str, int]:
    """``shape`` with its operands and operators taken left to right, written as ``random_expression`` writes it."""
    if shape is None:
        value = next(leaves)
        return str(value), value
    left, left_value = _fill(shape[0], leaves, ops, False)
    op = next(ops)
    right, right_value = _fill(shape[1], leaves, ops, False)
    text = f"{left} {op} {right}"
    return (text if outermost else f"({text})"), _APPLY[op](left_value, right_value)


@functools.cache
def _level_keys(level: int) -> frozenset[int]:
    """The split keys (``problem.split_key``) of every expression of an enumerable level."""
    return frozenset(split_key(text) for text, _ in expressions(LEVELS[level]))


@functools.cache
def _split_keys(levels: frozenset[int]) -> array:
    """The sorted split keys of every expression of the (enumerable) ``levels``, once each."""
    return array("Q", sorted(frozenset().union(*map(_level_keys, levels))))


def _largest_draw_chance(level: Level) -> float:
    """The largest probability that one ``random_expression(rng, level)`` is a given expression."""

    @functools.cache
    def shape_chance(operands: int) -> float:  # the likeliest tree shape: the left size is uniform at each node
        if operands == 1:
            return 1.0
        return max(shape_chance(left) * shape_chance(operands - left) for left in range(1, operands)) / (operands - 1)

    n = level.operands
    return shape_chance(n) / len(level.operators) ** (n - 1) / (level.high - level.low + 1) ** n


class ArithmeticTask(StrictModel):
    """Settings of the arithmetic task; ``load(split)`` returns the split's problems."""

    kind: Literal["arithmetic"] = "arithmetic"
    difficulty: Annotated[tuple[int, ...], _DIFFICULTY_SCHEMA] = Field(
        (2,), description="level(s) 1-5; with several, each problem draws one"
    )
    seed: int = 0
    train_size: int = Field(
        1000,
        gt=0,
        le=SIZE_LIMITS["train"],
        description="distinct train problems; at most what difficulty and eval_fraction hold (one-digit sums: about "
        "90; a submit that asks for more is refused with the number)",
    )
    eval_size: int = Field(
        100,
        gt=0,
        le=SIZE_LIMITS["eval"],
        description="distinct eval problems; at most what difficulty and eval_fraction hold (one-digit sums: about "
        "10 at eval_fraction 0.1; a submit that asks for more is refused with the number)",
    )
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="share of all expressions held out for eval")
    template: str = Field(
        DEFAULT_TEMPLATE,
        description="the user message; '{expression}' marks the expression",
        json_schema_extra={"pattern": r"\{expression\}"},
    )

    @field_validator("difficulty", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return (value,) if isinstance(value, int) else value

    @field_validator("difficulty")
    @classmethod
    def _known_levels(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        unknown = [level for level in value if level not in LEVELS]
        if not value or unknown:
            raise ValueError(f"levels must be among {sorted(LEVELS)}, got {list(value)}")
        return value

    @field_validator("template")
    @classmethod
    def _has_expression(cls, value: str) -> str:
        if "{expression}" not in value:
            raise ValueError("must contain '{expression}'")
        return value

    def capacity(self, split: Split = "train") -> int:
        """The most distinct ``split`` problems ``load`` supplies, counted without drawing any (cheap; never raises).

        Exact when every level is enumerable (1-3: the split's share of their expressions, by hash). A level too
        large to enumerate (4, 5) adds what ``load``'s draws find of it, bounded below: the seeded stream's draws
        (``20 x size + 10,000``) and as many again from the large levels alone give each a new problem of the
        split with chance at least ``fresh`` (the split's share, less what hits a problem already found), ``c``
        new problems per stream draw in all; capacity is the largest size whose shortfall below the enumerable
        count is at most half of that expectation (missed with chance below e**-25), or ``SIZE_LIMITS[split]`` when
        every size is (``c >= 0.1``).
        """
        small = frozenset(level for level in self.difficulty if level_size(LEVELS[level]) <= ENUMERABLE)
        keys = _split_keys(small)
        held_out = bisect.bisect_left(keys, self.eval_fraction * 2**64)
        exact = held_out if split == "eval" else len(keys) - held_out
        large = [level for level in self.difficulty if level not in small]  # as often as the stream draws them
        if not large:
            return exact
        share = self.eval_fraction if split == "eval" else 1 - self.eval_fraction
        chance = max(_largest_draw_chance(LEVELS[level]) for level in large)
        # the hash's share of one level's expressions strays from ``share`` by at most 8 sd; a draw repeats one of
        # the problems found or enumerated with chance at most their count x ``chance``
        fresh = share - 8 * math.sqrt(chance * share) - (SIZE_LIMITS[split] + len(keys)) * chance
        c = fresh * (1 + len(large) / len(self.difficulty))
        if c < 0.02:  # too few expected finds even at 10,000 draws for the bound to hold: the large levels add none
            return exact
        if 10 * c >= 1:
            return SIZE_LIMITS[split]
        # size - exact <= (20 x size + 10,000) x c / 2
        return min(SIZE_LIMITS[split], math.floor((exact + 5000 * c) / (1 - 10 * c)))

    def shortfall(self, split: Split = "train") -> str | None:
        """Why ``load(split)`` cannot supply ``<split>_size`` problems (the numbers and the fix), or None if it can."""
        size = self.train_size if split == "train" else self.eval_size
        supplied = self.capacity(split)
        if size <= supplied:
            return None
        enumerable = all(level_size(LEVELS[level]) <= ENUMERABLE for level in self.difficulty)
        fixes = [f"ask for at most {supplied}"] if supplied else []
        hardest = max(LEVELS, key=lambda level: level_size(LEVELS[level]))
        if hardest not in self.difficulty:
            harder = self.model_copy(update={"difficulty": (*self.difficulty, hardest)})
            if size <= harder.capacity(split):
                fixes.append("add a harder level")
        fixes.append(("raise" if split == "eval" else "lower") + " eval_fraction")
        holds = "holds only" if enumerable else "supplies at most"
        return (
            f"difficulty {list(self.difficulty)} {holds} {supplied} distinct {split} problems at eval_fraction "
            f"{self.eval_fraction}, not {size}; {', '.join(fixes[:-1])}{' or ' if len(fixes) > 1 else ''}{fixes[-1]}"
        )

    def load(self, split: Split = "train") -> list[Problem]:
        """The first ``<split>_size`` distinct problems of the seeded stream that fall in ``split``.

        Should the stream's draws run out first (a size near ``capacity``), the enumerable levels' remaining problems
        follow in their fixed order, then further draws from the large levels; a size above ``capacity`` is refused
        before drawing."""
        size = self.train_size if split == "train" else self.eval_size
        problem = self.shortfall(split)
        if problem is not None:
            raise ValueError(f"{split}_size: {problem}")
        rng = random.Random(self.seed)
        found: dict[str, Problem] = {}

        def add(expression: str, value: int, level: int) -> bool:
            """Keep a new expression of the split; True once there are ``size``."""
            if expression not in found and in_split(expression, split, self.eval_fraction):
                found[expression] = Problem(
                    id="arithmetic-" + hashlib.sha256(expression.encode()).hexdigest()[:12],
                    prompt=self.template.replace("{expression}", expression),
                    reference=str(value),
                    task="arithmetic",
                    metadata={"expression": expression, "difficulty": level},
                )
            return len(found) == size

        draws = 20 * size + 10_000
        for _ in range(draws):
            level = rng.choice(self.difficulty)
            if add(*random_expression(rng, LEVELS[level]), level):
                return list(found.values())
        for level in sorted({level for level in self.difficulty if level_size(LEVELS[level]) <= ENUMERABLE}):
            for expression, value in expressions(LEVELS[level]):
                if add(expression, value, level):
                    return list(found.values())
        large = tuple(level for level in self.difficulty if level_size(LEVELS[level]) > ENUMERABLE)
        for _ in range(draws if large else 0):
            level = rng.choice(large)
            if add(*random_expression(rng, LEVELS[level]), level):
                return list(found.values())
        raise ValueError(  # capacity's bound says this happens with chance below e**-25
            f"{split}_size: difficulty {list(self.difficulty)} gave only {len(found)} distinct {split} problems in "
            f"{2 * draws} draws, not {size}, below its capacity ({self.capacity(split)}); lower {split}_size"
        )
