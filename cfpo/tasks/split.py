"""Train/eval partition by the problem's own text, so a held-out problem is held out under every seed and run."""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "eval"]


def is_held_out(text: str, eval_fraction: float) -> bool:
    """True for the ``eval_fraction`` share of texts that belong to the eval split (a hash, not a draw)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < eval_fraction * 2**64


def in_split(text: str, split: Split, eval_fraction: float) -> bool:
    return is_held_out(text, eval_fraction) == (split == "eval")
