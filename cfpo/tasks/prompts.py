"""What the rollout worker prompts with: an endless, reproducible prompt order (a resumed run continues exactly
where it stopped), and the text and token ids of one prompt (its chat template if the model has one, else a plain
format)."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

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


PLAIN_FORMAT = "Question: {prompt}\nAnswer:"


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    token_ids: list[int]
    chat_template: bool  # whether the tokenizer's chat template made the text


def render_prompt(tokenizer: Any, prompt: str) -> RenderedPrompt:
    """Render one user message for ``tokenizer`` (a Hugging Face tokenizer).

    With a chat template the text is the template's, ending in the assistant's turn, and its ids carry no extra
    special tokens: the template already has the ones the model expects, and a second BOS would shift the model
    off its training distribution. Without one (base models) it is PLAIN_FORMAT, tokenized with the tokenizer's
    usual special tokens.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return RenderedPrompt(text, tokenizer(text, add_special_tokens=False)["input_ids"], True)
    text = PLAIN_FORMAT.replace("{prompt}", prompt)
    return RenderedPrompt(text, tokenizer(text)["input_ids"], False)
