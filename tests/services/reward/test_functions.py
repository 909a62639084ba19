"""The built-in reward functions and answer extraction, called directly (they are pure functions)."""

import pytest

from services.reward.answers import final_answer, last_boxed
from services.reward.functions import REGISTRY, ScoreInput, call


def score(name: str, completion: str, reference: str = "", **metadata) -> float:
    return call(name, ScoreInput("prompt", completion, reference, metadata))[0]


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        ("The answer is \\boxed{2}", "2", 1.0),
        ("The answer is \\boxed{2}", "3", 0.0),
        ("The answer is 7", "7", 1.0),
        ("so x = 7.", "7", 1.0),
        ("3 apples and 7 oranges", "7", 1.0),  # no marker: the last number
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("The answer is 1,000", "1000", 1.0),
        ("\\boxed{2} but actually 3", "2", 1.0),  # a boxed answer wins over a later number
        ("I have no idea", "7", 0.0),
    ],
)
def test_math_equivalence(completion, reference, expected):
    assert score("math_equivalence", completion, reference) == expected


def test_math_equivalence_refuses_a_reference_without_math():
    with pytest.raises(ValueError, match="reference"):
        score("math_equivalence", "\\boxed{2}", "no number here")


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("\\boxed{B}", 1.0),
        ("The answer is B.", 1.0),
        ("Answer: $B$", 1.0),
        ("B", 1.0),
        ("The answer is b", 0.0),  # case-sensitive
        ("\\boxed{C}", 0.0),
    ],
)
def test_exact_match(completion, expected):
    assert score("exact_match", completion, " B ") == expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("so \\boxed{42}", 1.0),
        ("\\boxed{}", 0.0),
        ("\\boxed{42", 0.0),
        ("42", 0.0),
    ],
)
def test_format(completion, expected):
    assert score("format", completion) == expected


def test_length_penalty_is_zero_within_budget_then_linear_to_minus_one():
    assert score("length_penalty", "x" * 100, length_budget=100) == 0.0
    assert score("length_penalty", "x" * 150, length_budget=100) == -0.5
    assert score("length_penalty", "x" * 1000, length_budget=100) == -1.0
    with pytest.raises(ValueError, match="length_budget"):
        score("length_penalty", "x", length_budget="long")


def test_boxed_extraction_balances_braces_and_takes_the_last():
    assert last_boxed("\\boxed{\\frac{1}{2}} then \\boxed {x^{2}}") == "x^{2}"
    assert last_boxed("\\boxed{1} \\boxed{unclosed") == "1"
    assert final_answer("The answer is: 12.\n") == "12"


def test_extraction_stays_linear_on_hostile_input():
    # 20,000 unclosed boxes would take minutes with a rescan per box; a single pass takes milliseconds
    import time

    start = time.perf_counter()
    assert last_boxed("\\boxed{" * 20_000) is None
    assert time.perf_counter() - start < 1.0


def test_registry_names_the_built_ins():
    assert {"math_equivalence", "exact_match", "format", "length_penalty"} <= set(REGISTRY)


def test_digit_share_counts_visible_digits():
    from services.reward.functions import digit_share

    assert digit_share(ScoreInput("p", " 12 ab\n", "x"))[0] == pytest.approx(0.5)
    assert digit_share(ScoreInput("p", "   ", "x"))[0] == 0.0
    assert digit_share(ScoreInput("p", "7", "x"))[0] == 1.0


@pytest.mark.parametrize(
    "completion, reward",
    [
        ("What is 5 + 4? 5 + 4", 0.0),  # restating the expression is not answering it
        ("The answer is \\boxed{5+4}", 0.0),
        ("The answer is \\boxed{9}", 1.0),
        ("so 5 + 4 = 9", 1.0),
        ("\\boxed{\\frac{18}{2}}", 1.0),  # an equal value in another form still counts
    ],
)
def test_math_equivalence_wants_a_value_when_the_reference_is_one(completion, reward):
    value, _ = call("math_equivalence", ScoreInput("What is 5 + 4?", completion, "9"))
    assert value == reward
