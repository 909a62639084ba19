"""How a rank's share of a minibatch is cut into micro-batches: by a count of sequences, or by a token budget.

Sequences are sorted by length first (stably), so each micro-batch holds sequences of similar length and is cut
to its own longest one (``completion_logprobs``): little is computed on padding. A micro-batch's cost is its
padded size, sequences x the longest one's tokens, which is what a token budget bounds. ``lengths`` is indexed by
batch row throughout, as ``indices`` are.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _by_length(indices: Tensor, lengths: Tensor) -> Tensor:
    return indices[torch.sort(lengths[indices], stable=True).indices]


def padded_tokens(micro_batch: Tensor, lengths: Tensor) -> int:
    return len(micro_batch) * int(lengths[micro_batch].max())


def split_by_count(indices: Tensor, lengths: Tensor, size: int) -> list[Tensor]:
    """Micro-batches of ``size`` sequences (the last may hold fewer)."""
    return list(_by_length(indices, lengths).split(size))


def split_by_budget(indices: Tensor, lengths: Tensor, max_tokens: int) -> list[Tensor]:
    """The fewest micro-batches of length-sorted sequences whose padded sizes stay within ``max_tokens``; a
    sequence longer than the budget is a micro-batch of its own."""
    ordered = _by_length(indices, lengths).tolist()
    pieces: list[list[int]] = []
    for row in ordered:  # ascending: the row joining a piece is its longest
        if pieces and (len(pieces[-1]) + 1) * int(lengths[row]) <= max_tokens:
            pieces[-1].append(row)
        else:
            pieces.append([row])
    return [torch.tensor(piece, dtype=indices.dtype, device=indices.device) for piece in pieces]


def split_further(micro_batches: list[Tensor], lengths: Tensor, count: int) -> list[Tensor]:
    """``micro_batches`` cut to exactly ``count``, halving the largest one (by padded size) until there are
    enough: each stays within the budget it was cut to. Every rank needs the same count (the most any rank's
    budget needs), because DeepSpeed's partitioned stages reduce gradients in collectives that every rank must
    enter equally often."""
    pieces = list(micro_batches)
    if count > sum(len(piece) for piece in pieces):
        raise ValueError(f"micro-batches: cannot cut {sum(len(p) for p in pieces)} sequences into {count}")
    while len(pieces) < count:
        at = max(
            (i for i, piece in enumerate(pieces) if len(piece) > 1), key=lambda i: padded_tokens(pieces[i], lengths)
        )
        pieces[at : at + 1] = list(pieces[at].tensor_split(2))
    return pieces
