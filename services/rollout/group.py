"""How one prompt becomes a group, in the steps a rollout worker times and retries one by one: sample the group's
completions, score them, weigh them into samples. The pipeline benchmark runs the same steps."""

from __future__ import annotations

from typing import Any

from cfpo.advantages import group_advantages
from cfpo.clients.generation import Completion, GenerationClient
from cfpo.clients.reward import RewardClient, ScoreItem
from cfpo.run_spec import RunSpec
from cfpo.sample import Sample
from cfpo.tasks import Problem


def sample_completions(
    generation: GenerationClient, spec: RunSpec, prompt_ids: list[int], *, seed: int, eos_token_id: int
) -> list[Completion]:
    """The run's G completions of one prompt, at its sampling temperature and length."""
    rollout = spec.rollout
    return generation.generate(
        prompt_ids,
        n=rollout.group_size,
        temperature=spec.learner.temperature,
        max_tokens=rollout.max_tokens,
        seed=seed,
        stop_token_ids=[eos_token_id],
        timeout=rollout.request_timeout,
    )


def decoded(tokenizer: Any, completions: list[Completion]) -> list[str]:
    return [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in completions]


def score_answers(rewards: RewardClient, spec: RunSpec, problem: Problem, texts: list[str]) -> list[float]:
    """Each completion's reward for ``problem``, under the run's reward functions."""
    scores = rewards.score([ScoreItem.answer(problem, text) for text in texts], rewards=spec.rollout.rewards)
    return [score.reward for score in scores]


def weighed_samples(
    spec: RunSpec, prompt_ids: list[int], completions: list[Completion], rewards: list[float]
) -> list[Sample]:
    """The group's samples, each with its group-relative advantage."""
    advantages = group_advantages(spec.rollout.advantage, rewards)
    return [
        Sample(
            prompt_ids=prompt_ids,
            completion_ids=c.token_ids,
            behaviour_logprobs=c.logprobs,
            advantage=a,
            reward=r,
            min_version=c.min_version,
            max_version=c.max_version,
        )
        for c, r, a in zip(completions, rewards, advantages)
    ]
