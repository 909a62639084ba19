"""Sampling rollout batches in-process with transformers, for the learner demo and the learner's tests.

The pipeline samples with vLLM; this stand-in needs no server. It samples from the full distribution at the
given temperature (no top-k, no top-p) and records each token's log-prob under exactly that distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from cfpo.advantages import group_advantages
from cfpo.sample import Sample
from trainer.logprobs import completion_logprobs, pack

RewardFn = Callable[[list[int]], float]


def digit_reward(tokenizer) -> RewardFn:
    """A dense toy reward: the share of completion tokens that spell digits (teaches a random model quickly)."""
    digit_tokens = {
        token_id
        for token_id in range(len(tokenizer))
        if (text := tokenizer.decode([token_id]).strip()) and text.isdigit()
    }
    return lambda completion: sum(t in digit_tokens for t in completion) / len(completion)


def sample_batch(
    model_dir: str | Path,
    prompts: list[str],
    group_size: int,
    *,
    temperature: float = 1.0,
    max_new_tokens: int = 16,
    seed: int = 0,
    advantage: str = "grpo",
    reward: Callable[[object], RewardFn] = digit_reward,
) -> list[Sample]:
    """``len(prompts) x group_size`` samples with behaviour log-probs, rewards and group advantages."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    score = reward(tokenizer)
    torch.manual_seed(seed)
    samples: list[Sample] = []
    for prompt in prompts:
        prompt_ids = tokenizer(prompt).input_ids
        with torch.no_grad():
            output = model.generate(
                torch.tensor([prompt_ids] * group_size),
                attention_mask=torch.ones(group_size, len(prompt_ids), dtype=torch.long),
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        completions = [_until_eos(row[len(prompt_ids) :].tolist(), tokenizer.eos_token_id) for row in output]
        rewards = [score(c) for c in completions]
        advantages = group_advantages(advantage, rewards)
        group = [
            Sample(
                prompt_ids=prompt_ids,
                completion_ids=c,
                behaviour_logprobs=[0.0] * len(c),
                advantage=a,
                reward=r,
                min_version=0,
                max_version=0,
            )
            for c, r, a in zip(completions, rewards, advantages)
        ]
        with torch.no_grad():
            logprobs, _ = completion_logprobs(model, pack(group, tokenizer.pad_token_id), temperature)
        samples += [
            s.model_copy(update={"behaviour_logprobs": logprobs[i, : len(s.completion_ids)].tolist()})
            for i, s in enumerate(group)
        ]
    return samples


def _until_eos(tokens: list[int], eos_token_id: int) -> list[int]:
    """The completion up to and including its end-of-sequence token (generate pads after it)."""
    return tokens[: tokens.index(eos_token_id) + 1] if eos_token_id in tokens else tokens
