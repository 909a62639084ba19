"""Finding the final answer in a completion, in linear time (completions are untrusted and can be long)."""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\boxed\s*\{")
_ANSWER_IS = re.compile(r"answer\s*(?:is\s*:?|:)\s*([^\n]+)", re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` whose braces balance, or None."""
    closing: dict[int, int] = {}
    opened: list[int] = []
    for i, char in enumerate(text):
        if char == "{":
            opened.append(i)
        elif char == "}" and opened:
            closing[opened.pop()] = i
    for match in reversed(list(_BOXED.finditer(text))):
        end = closing.get(match.end() - 1)
        if end is not None:
            return text[match.end() : end].strip()
    return None


def clean(answer: str) -> str:
    """Drop what surrounds an answer without changing it: whitespace, math-mode dollars, a closing full stop."""
    return answer.strip().strip("$").strip().removesuffix(".").strip()


def final_answer(text: str) -> str:
    """The last boxed answer, else what follows the last "answer is" / "answer:", else the whole text."""
    boxed = last_boxed(text)
    if boxed is not None:
        return clean(boxed)
    stated = list(_ANSWER_IS.finditer(text))
    return clean(stated[-1].group(1) if stated else text)
