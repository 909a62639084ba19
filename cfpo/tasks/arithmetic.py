"""The built-in arithmetic task: seeded integer expressions with exact answers, for runs that need no data files.

Problems are random binary trees over small integers, drawn from one seeded stream; a hash of the expression
puts each one in train or eval, so a held-out expression is never a training prompt under any seed.
"""

from __future__ import annotations

import hashlib
import operator
import random
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, WithJsonSchema, field_validator

from cfpo.config import StrictModel
from cfpo.tasks.problem import Problem, Split, in_split


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


class ArithmeticTask(StrictModel):
    """Settings of the arithmetic task; ``load(split)`` returns the split's problems."""

    kind: Literal["arithmetic"] = "arithmetic"
    difficulty: Annotated[tuple[int, ...], _DIFFICULTY_SCHEMA] = Field(
        (2,), description="level(s) 1-5; with several, each problem draws one"
    )
    seed: int = 0
    train_size: int = Field(1000, gt=0, le=10_000_000)
    eval_size: int = Field(100, gt=0, le=100_000)
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

    def load(self, split: Split = "train") -> list[Problem]:
        """The first ``<split>_size`` distinct problems of the seeded stream that fall in ``split``."""
        size = self.train_size if split == "train" else self.eval_size
        rng = random.Random(self.seed)
        found: dict[str, Problem] = {}
        draws = 20 * size + 10_000  # enough to exhaust the small levels, so a too-large size is reported, not spun on
        for _ in range(draws):
            level = rng.choice(self.difficulty)
            expression, value = random_expression(rng, LEVELS[level])
            if expression in found or not in_split(expression, split, self.eval_fraction):
                continue
            found[expression] = Problem(
                id="arithmetic-" + hashlib.sha256(expression.encode()).hexdigest()[:12],
                prompt=self.template.replace("{expression}", expression),
                reference=str(value),
                task="arithmetic",
                metadata={"expression": expression, "difficulty": level},
            )
            if len(found) == size:
                return list(found.values())
        raise ValueError(
            f"{split}_size: difficulty {list(self.difficulty)} gave only {len(found)} distinct {split} problems "
            f"in {draws} draws, not {size}; lower {split}_size or add a harder level"
        )
