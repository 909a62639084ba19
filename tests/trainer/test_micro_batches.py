"""Micro-batches cut by a token budget: each within it (unless one sequence alone is over), as few as the greedy cut
makes, and cut further to any count every rank agrees on without leaving the budget or losing a sequence."""

import pytest
import torch

from trainer.micro_batches import padded_tokens, split_by_budget, split_by_count, split_further

LENGTHS = torch.tensor([5, 40, 7, 12, 12, 3, 30, 9])


def _rows(micro_batches):
    return sorted(int(i) for piece in micro_batches for i in piece)


def test_count_split_sorts_by_length_and_keeps_every_sequence():
    pieces = split_by_count(torch.arange(8), LENGTHS, 3)
    assert [len(p) for p in pieces] == [3, 3, 2]
    assert [LENGTHS[p].tolist() for p in pieces] == [[3, 5, 7], [9, 12, 12], [30, 40]]


def test_budget_split_stays_within_the_budget_and_is_greedy():
    pieces = split_by_budget(torch.arange(8), LENGTHS, 40)
    assert _rows(pieces) == list(range(8))
    assert all(padded_tokens(p, LENGTHS) <= 40 for p in pieces)
    # Sorted 3 5 7 9 | 12 12 | 30 | 40: each piece ends where one more sequence would pass 40.
    assert [LENGTHS[p].tolist() for p in pieces] == [[3, 5, 7, 9], [12, 12], [30], [40]]


def test_a_sequence_over_the_budget_is_a_micro_batch_of_its_own():
    pieces = split_by_budget(torch.arange(8), LENGTHS, 20)
    assert [LENGTHS[p].tolist() for p in pieces][-2:] == [[30], [40]]
    assert _rows(pieces) == list(range(8))


@pytest.mark.parametrize("count", [4, 5, 8])
def test_cut_further_to_the_agreed_count_within_the_same_budget(count):
    pieces = split_further(split_by_budget(torch.arange(8), LENGTHS, 40), LENGTHS, count)
    assert len(pieces) == count
    assert _rows(pieces) == list(range(8))
    assert all(padded_tokens(p, LENGTHS) <= 40 for p in pieces)


def test_more_micro_batches_than_sequences_is_refused():
    with pytest.raises(ValueError, match="cannot cut 8 sequences into 9"):
        split_further(split_by_budget(torch.arange(8), LENGTHS, 40), LENGTHS, 9)
