import random
import re
import statistics

import pytest
from pydantic import ValidationError

from cfpo.tasks import LEVELS, ArithmeticTask, is_held_out
from cfpo.tasks.arithmetic import SIZE_LIMITS, level_size, random_expression
from cfpo.tasks.arithmetic import expressions as enumerate_level

OPERAND = re.compile(r"\d+")


def expressions(problems):
    return [p.metadata["expression"] for p in problems]


def test_same_seed_same_problems_other_seed_others():
    task = ArithmeticTask(difficulty=[2, 3], seed=7, train_size=200)
    assert task.load("train") == ArithmeticTask(difficulty=[2, 3], seed=7, train_size=200).load("train")
    assert expressions(task.load("train")) != expressions(task.model_copy(update={"seed": 8}).load("train"))


def test_a_larger_split_extends_the_smaller_one():
    small = ArithmeticTask(seed=3, train_size=50).load("train")
    assert ArithmeticTask(seed=3, train_size=120, eval_size=7).load("train")[:50] == small


@pytest.mark.parametrize("difficulty", [2, 3, 5])
def test_eval_never_holds_a_training_problem_under_any_seed(difficulty):
    train = set()
    for seed in range(3):
        train |= set(expressions(ArithmeticTask(difficulty=difficulty, seed=seed).load("train")))
    for seed in range(3):
        held_out = expressions(ArithmeticTask(difficulty=difficulty, seed=seed).load("eval"))
        assert len(held_out) == 100 and not train & set(held_out)
    assert not any(is_held_out(e, 0.1) for e in train)


def test_hash_partition_holds_out_about_the_asked_share():
    share = statistics.mean(is_held_out(f"{a} + {b}", 0.25) for a in range(100) for b in range(100))
    assert 0.23 < share < 0.27


def test_problems_within_a_split_are_distinct_with_stable_ids():
    problems = ArithmeticTask(difficulty=2, train_size=2000).load("train")
    assert len(set(expressions(problems))) == len({p.id for p in problems}) == 2000
    other_seed = {p.metadata["expression"]: p.id for p in ArithmeticTask(difficulty=2, seed=1).load("train")}
    assert all(other_seed[p.metadata["expression"]] == p.id for p in problems if p.metadata["expression"] in other_seed)


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_references_equal_python_evaluation_and_stay_in_the_level(level):
    spec = LEVELS[level]
    size = 80 if level == 1 else 500
    for problem in ArithmeticTask(difficulty=level, train_size=size).load("train"):
        expression = problem.metadata["expression"]
        assert expression in problem.prompt and "\\boxed{}" in problem.prompt
        assert problem.reference == str(eval(expression))
        assert problem.task == "arithmetic" and problem.metadata["difficulty"] == level
        operands = [int(x) for x in OPERAND.findall(expression)]
        assert len(operands) == spec.operands and all(spec.low <= x <= spec.high for x in operands)
        assert set(re.findall(r"[+\-*]", expression)) <= set(spec.operators)


def test_difficulty_grows_with_the_level():
    def operand_digits(level):
        problems = ArithmeticTask(difficulty=level, train_size=80 if level == 1 else 500).load("train")
        return statistics.mean(len("".join(OPERAND.findall(e))) for e in expressions(problems))

    digits = [operand_digits(level) for level in sorted(LEVELS)]
    assert digits == sorted(digits) and len(set(digits)) == len(digits), digits
    levels = [LEVELS[k] for k in sorted(LEVELS)]
    for easier, harder in zip(levels, levels[1:]):
        assert harder.operands >= easier.operands and set(harder.operators) >= set(easier.operators)
        more_work = harder.operands > easier.operands or len(harder.operators) > len(easier.operators)
        assert more_work or harder.high > easier.high


def test_mixed_difficulty_draws_every_level():
    problems = ArithmeticTask(difficulty=[1, 3], train_size=60).load("train")
    assert {p.metadata["difficulty"] for p in problems} == {1, 3}


def test_references_pass_the_math_verifier():
    math_verify = pytest.importorskip("math_verify")
    for problem in ArithmeticTask(difficulty=[2, 4], train_size=30).load("train"):
        gold = math_verify.parse(problem.reference, parsing_timeout=None)
        right = math_verify.parse(f"So it is \\boxed{{{problem.reference}}}.", parsing_timeout=None)
        wrong = math_verify.parse(f"\\boxed{{{int(problem.reference) + 1}}}", parsing_timeout=None)
        assert math_verify.verify(gold, right, timeout_seconds=None)
        assert not math_verify.verify(gold, wrong, timeout_seconds=None)


def test_custom_template():
    problem = ArithmeticTask(template="Compute {expression}. Answer in \\boxed{}.", train_size=1).load("train")[0]
    assert problem.prompt == f"Compute {problem.metadata['expression']}. Answer in \\boxed{{}}."


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"difficulty": 6}, "difficulty"),
        ({"difficulty": []}, "difficulty"),
        ({"template": "What is it?"}, "template"),
        ({"eval_fraction": 0}, "eval_fraction"),
        ({"train_size": 0}, "train_size"),
        ({"size": 10}, "size"),
    ],
)
def test_bad_settings_name_the_field(settings, field):
    with pytest.raises(ValidationError, match=field):
        ArithmeticTask(**settings)


def test_asking_for_more_problems_than_a_level_holds_says_so():
    with pytest.raises(ValueError, match=r"eval_size: difficulty \[1\] holds only 9 distinct eval problems .* not 100"):
        ArithmeticTask(difficulty=1).load("eval")  # one-digit sums: 100 in all, 9 held out


# --- capacity: how many distinct problems a split holds, counted without drawing them -----------------------------


@pytest.mark.parametrize("level", [1, 2, 3])
def test_the_enumeration_is_every_expression_the_stream_draws(level):
    every = dict(enumerate_level(LEVELS[level]))
    assert len(every) == level_size(LEVELS[level])  # each text once
    rng = random.Random(level)
    for _ in range(2000):
        expression, value = random_expression(rng, LEVELS[level])
        assert every[expression] == value


@pytest.mark.parametrize("difficulty", [[1], [2], [1, 2]])
@pytest.mark.parametrize("eval_fraction", [0.1, 0.5])
def test_capacity_of_enumerable_levels_is_the_exact_count_by_hash(difficulty, eval_fraction):
    texts = {text for level in difficulty for text, _ in enumerate_level(LEVELS[level])}
    held_out = sum(is_held_out(text, eval_fraction) for text in texts)
    task = ArithmeticTask(difficulty=difficulty, eval_fraction=eval_fraction)
    assert (task.capacity("train"), task.capacity("eval")) == (len(texts) - held_out, held_out)


@pytest.mark.parametrize(
    "settings",
    [
        {"difficulty": [1]},  # 9 eval problems: the stream finds them all
        {"difficulty": [2], "eval_fraction": 0.01},  # 153: more than its draws find; the enumeration adds the rest
        {"difficulty": [4], "eval_fraction": 0.025},  # a large level at a small share: the bound on what draws find
        {"difficulty": [1, 4], "eval_fraction": 0.025},
    ],
)
def test_a_split_at_its_capacity_loads_and_one_more_is_refused_before_drawing(settings):
    task = ArithmeticTask(**settings)
    capacity = task.capacity("eval")
    assert 0 < capacity < 1000
    problems = task.model_copy(update={"eval_size": capacity}).load("eval")
    assert len({p.metadata["expression"] for p in problems}) == capacity
    assert all(is_held_out(p.metadata["expression"], task.eval_fraction) for p in problems)
    over = task.model_copy(update={"eval_size": capacity + 1})
    assert over.shortfall("eval") is not None and str(capacity) in over.shortfall("eval")
    with pytest.raises(ValueError, match=rf"^eval_size: difficulty .* {capacity} distinct eval problems"):
        over.load("eval")


def test_capacity_is_cheap_and_total_at_the_extremes():
    for difficulty in ([1], [3], [4], [5], [1, 2, 3, 4, 5], [1, 1, 1, 5]):
        for eval_fraction in (5e-324, 1e-9, 0.5, 1 - 1e-16):
            task = ArithmeticTask(difficulty=difficulty, eval_fraction=eval_fraction, train_size=10**7, eval_size=10**5)
            for split in ("train", "eval"):
                assert task.capacity(split) >= 0  # exact counts may pass the size limit (level 3 holds 123,462)
                assert task.shortfall(split) is None or "distinct" in task.shortfall(split)
    assert ArithmeticTask(difficulty=[4]).capacity("train") == SIZE_LIMITS["train"]  # every size it admits


def test_the_refusal_says_the_numbers_and_the_fix():
    assert ArithmeticTask(difficulty=1).shortfall("eval") == (
        "difficulty [1] holds only 9 distinct eval problems at eval_fraction 0.1, not 100; ask for at most 9, add a "
        "harder level or raise eval_fraction"
    )
    # at this share even the largest level adds too few: only eval_fraction helps
    assert ArithmeticTask(difficulty=1, eval_fraction=0.999).shortfall("train") == (
        "difficulty [1] holds only 0 distinct train problems at eval_fraction 0.999, not 1000; lower eval_fraction"
    )
    assert ArithmeticTask(difficulty=1, train_size=91, eval_size=9).shortfall("train") is None
