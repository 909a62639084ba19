"""The text and token ids the model is prompted with: its chat template if it has one, else a plain format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
