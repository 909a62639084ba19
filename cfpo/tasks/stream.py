"""Endless, reproducible prompt order for the rollout worker: a resumed run continues exactly where it stopped."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from cfpo.tasks.problem import Problem


def _epoch_order(size: int, seed: int, epoch: int) -> list[int]:
    order = list(range(size))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def batches(
    problems: Sequence[Problem], n_prompts: int, *, seed: int = 0, start_index: int = 0
) -> Iterator[list[Problem]]:
    """Batches of ``n_prompts`` from prompt ``start_index`` on; the k-th batch starts at start_index + k * n_prompts.

    Epoch e (prompts e*len .. (e+1)*len - 1) visits every problem once, in an order fixed by ``seed`` and e alone,
    so the next index is all a checkpoint needs to save. Batches run on across epoch ends.
    """
    if not problems:
        raise ValueError("problems: the task has no problems to draw from")
    if n_prompts < 1:
        raise ValueError(f"n_prompts: must be at least 1, got {n_prompts}")
    if start_index < 0:
        raise ValueError(f"start_index: must be at least 0, got {start_index}")
    size, index = len(problems), start_index
    epoch, order = -1, []
    while True:
        batch = []
        for _ in range(n_prompts):
            if index // size != epoch:
                epoch = index // size
                order = _epoch_order(size, seed, epoch)
            batch.append(problems[order[index % size]])
            index += 1
        yield batch
