import itertools

import pytest

from cfpo.tasks import Problem, batches

PROBLEMS = [Problem(id=f"p{i}", prompt=f"q{i}", reference=str(i), task="t") for i in range(10)]


def ids(batch_list):
    return [p.id for batch in batch_list for p in batch]


def take(n, **kwargs):
    return list(itertools.islice(batches(PROBLEMS, **kwargs), n))


def test_every_epoch_visits_each_problem_once_in_a_new_order():
    stream = ids(take(10, n_prompts=3, seed=1))  # 30 prompts: three epochs, batches straddle their ends
    epochs = [stream[i : i + 10] for i in range(0, 30, 10)]
    assert all(sorted(epoch) == sorted(p.id for p in PROBLEMS) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 3


def test_the_order_depends_on_the_seed_only():
    assert take(5, n_prompts=4, seed=3) == take(5, n_prompts=4, seed=3)
    assert ids(take(5, n_prompts=4, seed=3)) != ids(take(5, n_prompts=4, seed=4))
    assert ids(take(4, n_prompts=5, seed=3)) == ids(take(5, n_prompts=4, seed=3))  # batch size does not matter


@pytest.mark.parametrize("start_index", [0, 8, 13, 27])
def test_a_resumed_stream_continues_where_it_stopped(start_index):
    whole = ids(take(12, n_prompts=4, seed=2))
    resumed = ids(take(3, n_prompts=4, seed=2, start_index=start_index))
    assert resumed == whole[start_index : start_index + 12]


@pytest.mark.parametrize(
    "problems, kwargs, field",
    [
        ([], {"n_prompts": 2}, "problems"),
        (PROBLEMS, {"n_prompts": 0}, "n_prompts"),
        (PROBLEMS, {"n_prompts": 2, "start_index": -1}, "start_index"),
    ],
)
def test_bad_arguments_are_refused(problems, kwargs, field):
    with pytest.raises(ValueError, match=field):
        next(batches(problems, **kwargs))
