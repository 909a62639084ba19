"""Which model the generation service serves, asked over its OpenAI route ``GET /v1/models``.

vLLM lists each served model with ``id`` (the ``--served-model-name``, else the model path it was started with;
``cfpo serve generation`` passes the resolved model directory) and ``root`` (the model path). A run matches when
its ``model`` is either, compared as normalised paths, so ``/models/x/`` and ``/models/x`` are the same model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx


class GenerationUnavailable(RuntimeError):
    """The generation service could not be asked which model it serves."""


class ModelMismatch(ValueError):
    """The run's model is not the one generation serves."""


@dataclass(frozen=True)
class ServedModel:
    id: str
    root: str | None = None


ServedModels = Callable[[], list[ServedModel]]  # the lookup the app is given; None in its place skips the check


def generation_models(url: str, timeout_s: float) -> ServedModels:
    """The lookup against a generation service at ``url``."""

    def served() -> list[ServedModel]:
        try:
            response = httpx.get(f"{url}/v1/models", timeout=timeout_s)
            response.raise_for_status()
            return [ServedModel(str(m["id"]), m.get("root")) for m in response.json()["data"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
            reason = str(error) or type(error).__name__
            raise GenerationUnavailable(
                f"cannot ask generation at {url} which model it serves (GET /v1/models): {reason}"
            ) from None

    return served


def check_served(model: Path, served: list[ServedModel]) -> None:
    """Raise ModelMismatch, saying what is served, unless ``model`` is among ``served``."""
    names = {os.path.normpath(name) for m in served for name in (m.id, m.root) if name}
    if os.path.normpath(model) not in names:
        listed = ", ".join(sorted(m.id for m in served)) or "no model"
        raise ModelMismatch(
            f"model: {model} is not the model generation serves ({listed}); submit a run of that "
            f"model, or start generation with --model {model}"
        )
