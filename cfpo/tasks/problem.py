"""The problem record every task yields (what the rollout worker prompts with and the reward service checks), and
the train/eval partition by the problem's own text, so a held-out problem is held out under every seed and run."""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import Field, JsonValue

from cfpo.config import StrictModel


class Problem(StrictModel):
    """One prompt and its reference answer; the same shape whatever task produced it."""

    id: str = Field(min_length=1, description="stable across runs, so results and rewards can be joined on it")
    prompt: str = Field(min_length=1, description="the user message, before any chat template")
    reference: str = Field(min_length=1, description="the answer the verifier compares against, e.g. '42', '-7'")
    task: str = Field(min_length=1, description="which task produced it ('arithmetic', 'math', ...)")
    metadata: dict[str, JsonValue] = Field(default_factory=dict, description="where it came from, its difficulty")


Split = Literal["train", "eval"]


def split_key(text: str) -> int:
    """Where ``text`` falls in [0, 2**64): the texts below ``eval_fraction * 2**64`` are the eval split."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def is_held_out(text: str, eval_fraction: float) -> bool:
    """True for the ``eval_fraction`` share of texts that belong to the eval split (a hash, not a draw)."""
    return split_key(text) < eval_fraction * 2**64


def in_split(text: str, split: Split, eval_fraction: float) -> bool:
    return is_held_out(text, eval_fraction) == (split == "eval")
