"""Held-out evaluation against the real services: vLLM on CPU serving the tiny model, and the reward service.

The tiny random model solves nothing, so each check is built to fail if the plumbing is wrong: completions must be
the greedy ones, rewards must be the service's for the problem's own task and reference, accuracy must count
exactly the problems at full reward.
"""

import statistics

import httpx
import pytest
from transformers import AutoTokenizer

from cfpo.evaluation import evaluate
from cfpo.tasks import Problem, load_task, parse_task, render_prompt
from services.reward.answers import clean, final_answer
from tests.cfpo.evaluation.conftest import generation_service

MAX_TOKENS = 12


@pytest.fixture(scope="module")
def generation(tiny_model_dir, tmp_path_factory):
    with generation_service(tiny_model_dir, tmp_path_factory.mktemp("logs") / "generation.log") as (client, _):
        yield client


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _problems(task: str, count: int, references: list[str] | None = None) -> list[Problem]:
    """Held-out arithmetic prompts given to another task of the reward service (and other references)."""
    held_out = load_task(parse_task({"kind": "arithmetic", "difficulty": 2, "eval_size": count}), "eval")
    return [
        p.model_copy(update={"task": task, "reference": ref or p.reference})
        for p, ref in zip(held_out, references or [None] * count)
    ]


def _greedy_text(generation, tokenizer, problem: Problem) -> str:
    prompt = render_prompt(tokenizer, problem.prompt)
    [completion] = generation.generate(
        prompt.token_ids, temperature=0.0, max_tokens=MAX_TOKENS, stop_token_ids=[tokenizer.eos_token_id]
    )
    return tokenizer.decode(completion.token_ids, skip_special_tokens=True)


def _digit_share(text: str) -> float:
    visible = [c for c in text if not c.isspace()]
    return sum(c.isdigit() for c in visible) / len(visible) if visible else 0.0


@pytest.mark.slow
def test_greedy_completions_scored_by_their_task(generation, rewards, tokenizer):
    problems = _problems("digits", 10)

    result = evaluate(generation, rewards, tokenizer, problems, max_tokens=MAX_TOKENS, chunk_size=4)

    assert result.n == 10 and [r.problem_id for r in result.problems] == [p.id for p in problems]
    assert [r.completion for r in result.problems] == [_greedy_text(generation, tokenizer, p) for p in problems]
    assert all(0 < r.completion_tokens <= MAX_TOKENS for r in result.problems)
    # digit_share, recomputed here: the service scored these completions with the task's own function
    assert [r.reward for r in result.problems] == pytest.approx([_digit_share(r.completion) for r in result.problems])
    assert result.mean_reward == pytest.approx(statistics.fmean(_digit_share(r.completion) for r in result.problems))
    assert result.mean_reward > 0.2  # the tiny model's tokenizer is made of arithmetic text: digits show up
    assert result.accuracy == sum(r.reward >= 1.0 for r in result.problems) / 10


@pytest.mark.slow
def test_accuracy_counts_problems_at_full_reward(generation, rewards, tokenizer):
    """Half the references are the answers the model will give (exact_match then scores 1), half cannot match."""
    answers = [final_answer(_greedy_text(generation, tokenizer, p)) for p in _problems("exact_match", 8)]
    assert all(answer and clean(answer) == answer for answer in answers)  # usable as references as they are
    references = [answer if i % 2 == 0 else f"not {answer}" for i, answer in enumerate(answers)]

    result = evaluate(generation, rewards, tokenizer, _problems("exact_match", 8, references), max_tokens=MAX_TOKENS)

    assert [r.solved for r in result.problems] == [i % 2 == 0 for i in range(8)]
    assert [r.reward for r in result.problems] == [1.0, 0.0] * 4
    assert (result.accuracy, result.mean_reward) == (0.5, 0.5)


@pytest.mark.slow
def test_arithmetic_held_out_and_limit(generation, rewards, tokenizer):
    problems = load_task(parse_task({"kind": "arithmetic", "difficulty": 1, "eval_size": 6}), "eval")

    result = evaluate(generation, rewards, tokenizer, problems, max_tokens=MAX_TOKENS, limit=4)

    assert [r.problem_id for r in result.problems] == [p.id for p in problems[:4]]
    scored = httpx.post(
        f"{rewards.base_url}/v1/score",
        json={
            "items": [
                {"prompt": p.prompt, "completion": r.completion, "reference": p.reference, "task": "arithmetic"}
                for p, r in zip(problems, result.problems)
            ]
        },
    ).json()["rewards"]
    assert [r.reward for r in result.problems] == [s["reward"] for s in scored]
    assert result.accuracy == sum(r.solved for r in result.problems) / 4


def test_no_problems_is_an_error():
    with pytest.raises(ValueError, match="no problems"):
        evaluate(None, None, None, [], max_tokens=4)
