import re
import statistics

import pytest
from pydantic import ValidationError

from cfpo.tasks import LEVELS, ArithmeticTask, is_held_out

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
    with pytest.raises(ValueError, match=r"eval_size: difficulty \[1\] gave only \d+ distinct eval problems"):
        ArithmeticTask(difficulty=1).load("eval")  # one-digit sums: 100 in all, about 10 held out
