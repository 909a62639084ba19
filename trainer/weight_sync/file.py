"""File transport: the learner writes safetensors, the generation workers load them in place."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from cfpo.generation_client import GenerationClient, WeightUpdate


def export_weights(model: torch.nn.Module, directory: str | Path, version: int) -> Path:
    """Save every tensor of ``model`` (a Hugging Face causal LM) as ``version-N.safetensors``; returns the path.

    Tied output heads are left out, as in the model's own checkpoint (they are the embedding). The file is
    written under a temporary name and renamed, so a reader never sees half a file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    path = directory / f"version-{version}.safetensors"
    partial = path.with_suffix(".partial")
    save_file(state, str(partial), metadata={"format": "pt", "policy_version": str(version)})
    os.replace(partial, path)
    return path


def push_weights(client: GenerationClient, model: torch.nn.Module, directory: str | Path, version: int,
                 *, run: str | None = None, timeout: float = 120.0) -> WeightUpdate:
    """Export ``model`` as ``run``'s ``version`` and have generation serve it; the file is removed after."""
    path = export_weights(model, directory, version)
    try:
        return client.update_weights(path, version, run=run, timeout=timeout)
    finally:
        path.unlink(missing_ok=True)
