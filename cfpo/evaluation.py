"""Held-out evaluation: how often the served policy solves problems it never trained on.

Completions are greedy (temperature 0), so an evaluation of the same weights gives the same numbers every time and
two policy versions differ only by their weights. They come from the generation service and are scored by the
reward service, the same two services the rollout workers use, so evaluation checks what training optimises.

Accuracy is the share of problems whose reward is at least 1.0: the reward functions give 1.0 to a correct answer
(``math_equivalence``, ``exact_match``), so a problem counts as solved only at full reward. ``mean_reward`` keeps
partial credit (dense rewards such as ``digit_share``, weighted combinations).
"""

from __future__ import annotations

import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cfpo.clients.generation import Completion, GenerationClient
from cfpo.clients.reward import RewardClient, ScoreItem
from cfpo.tasks import Problem, render_prompt

SOLVED_REWARD = 1.0
DEFAULT_CHUNK = 16  # problems generated concurrently (vLLM batches them) and scored in one request


@dataclass(frozen=True)
class ProblemResult:
    problem_id: str
    completion: str
    reward: float
    solved: bool  # reward >= SOLVED_REWARD
    completion_tokens: int
    finish_reason: str  # "length": cut at max_tokens
    details: dict[str, Any]  # the reward service's, e.g. the answer it found


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # share of problems solved (reward >= 1.0)
    n: int
    mean_reward: float
    problems: list[ProblemResult]


def evaluate(
    generation: GenerationClient,
    rewards: RewardClient,
    tokenizer: Any,
    problems: list[Problem],
    *,
    max_tokens: int,
    limit: int | None = None,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
) -> EvalResult:
    """Evaluate the policy the generation service serves now on ``problems`` (the first ``limit`` of them).

    One greedy completion per problem, rendered with ``tokenizer`` (the served model's) and stopped at its end
    of sequence; each problem's ``task`` picks its reward functions in the reward service. ``seed`` is passed to
    the sampler for completeness: greedy decoding does not depend on it.
    """
    chosen = problems[:limit] if limit is not None else problems
    if not chosen:
        raise ValueError("no problems to evaluate")
    results: list[ProblemResult] = []
    with ThreadPoolExecutor(max_workers=chunk_size) as pool:
        for start in range(0, len(chosen), chunk_size):
            chunk = chosen[start : start + chunk_size]
            completions = list(
                pool.map(lambda problem: _greedy(generation, tokenizer, problem, max_tokens, seed), chunk)
            )
            results += _scored(rewards, tokenizer, chunk, completions)
    return EvalResult(
        accuracy=sum(r.solved for r in results) / len(results),
        n=len(results),
        mean_reward=statistics.fmean(r.reward for r in results),
        problems=results,
    )


def _greedy(generation: GenerationClient, tokenizer: Any, problem: Problem, max_tokens: int, seed: int) -> Completion:
    prompt = render_prompt(tokenizer, problem.prompt)
    [completion] = generation.generate(
        prompt.token_ids,
        n=1,
        temperature=0.0,
        max_tokens=max_tokens,
        seed=seed,
        stop_token_ids=[tokenizer.eos_token_id],
    )
    return completion


def _scored(
    rewards: RewardClient, tokenizer: Any, problems: list[Problem], completions: list[Completion]
) -> list[ProblemResult]:
    texts = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in completions]
    scores = rewards.score([ScoreItem.answer(p, text) for p, text in zip(problems, texts)])
    return [
        ProblemResult(
            problem_id=p.id,
            completion=text,
            reward=s.reward,
            solved=s.reward >= SOLVED_REWARD,
            completion_tokens=len(c.token_ids),
            finish_reason=c.finish_reason,
            details=s.details,
        )
        for p, text, c, s in zip(problems, texts, completions, scores)
    ]
