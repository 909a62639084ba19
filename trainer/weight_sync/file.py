"""File transport: the learner stages its weights as one safetensors file, the generation workers load it in place.

The file is written while generation runs; generation pauses only for the swap (services/generation/
worker_extension.py). It is kept between pushes and rewritten in place: on tmpfs (/dev/shm) a fresh file costs a page
allocation per 4 KiB, so writing 340 MB into a new file took 0.165 s against 0.068 s into the existing one (2-core
machine, 2026-12-01). Safe because a push finishes before the next one starts, and vLLM copies the tensors it loads
into its own (``.data.copy_``), so nothing keeps reading the file between pushes.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from cfpo.clients import Retry
from cfpo.clients.generation import GenerationClient, GenerationError, WeightUpdate
from trainer.distributed import is_main
from trainer.weight_sync import full_parameters, on_every_server

_HEADER_LENGTH_BYTES = 8  # safetensors: little-endian u64 header length, the JSON header, then the tensor bytes
_DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
# A stalled or restarting server: about 90 s before the run fails, as long as a vLLM CPU server takes to come back
# on SmolLM2-135M (~85 s; a tiny model ~25 s). A restarted server comes back on its base weights and loads these.
PUSH_RETRY = Retry(attempts=14, first_backoff=1.0)


class StagedWeights:
    """One file per run (per claim of a run, with ``claim``) in ``directory`` holding the weights generation is to
    load next: a learner that lost its claim never writes or deletes the file its successor pushes from."""

    def __init__(self, directory: str | Path, run: str, claim: str | None = None):
        self.path = Path(directory) / f"{run}{'' if claim is None else f'-{claim}'}.safetensors"

    def write(self, model: torch.nn.Module) -> Path:
        """Stage every tensor of ``model`` (a Hugging Face causal LM), in place when the layout is unchanged.

        Tied output heads are left out, as in the model's own checkpoint (they are the embedding). A new layout is
        written under a temporary name and renamed, so a reader never sees a file of two layouts.
        """
        state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        if not self._overwrite(state):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(".partial")
            save_file(
                {name: t.to("cpu").contiguous() for name, t in state.items()}, str(partial), metadata={"format": "pt"}
            )
            os.replace(partial, self.path)
        return self.path

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def _overwrite(self, state: dict[str, torch.Tensor]) -> bool:
        """Copy ``state`` into the staged file's tensor bytes; False (nothing written) if its layout differs."""
        try:
            file = self.path.open("r+b")
        except FileNotFoundError:
            return False
        with file, mmap.mmap(file.fileno(), 0) as mapped:
            header_length = int.from_bytes(mapped[:_HEADER_LENGTH_BYTES], "little")
            header = json.loads(mapped[_HEADER_LENGTH_BYTES : _HEADER_LENGTH_BYTES + header_length])
            header.pop("__metadata__", None)
            if not _same_layout(header, state):
                return False
            data = torch.frombuffer(mapped, dtype=torch.uint8)[_HEADER_LENGTH_BYTES + header_length :]
            for name, tensor in state.items():
                start, end = header[name]["data_offsets"]
                data[start:end].view(tensor.dtype).view(tensor.shape).copy_(tensor)
            del data  # the mapping cannot close while a tensor views it
        return True


def _same_layout(header: dict, state: dict[str, torch.Tensor]) -> bool:
    return header.keys() == state.keys() and all(
        header[name]["dtype"] == _DTYPE_NAMES.get(tensor.dtype) and header[name]["shape"] == list(tensor.shape)
        for name, tensor in state.items()
    )


class FileWeightSync:
    """The file transport: rank 0 stages the model in ``directory`` (one file per run), then has every generation
    server load the file in place, all at once, and label it with the same version."""

    def __init__(self, servers: list[GenerationClient], directory: Path):
        self.servers, self.directory = servers, directory

    def push(
        self, model: torch.nn.Module, version: int, *, run: str, claim: str | None = None, timeout: float = 120.0
    ) -> WeightUpdate | None:
        started = time.perf_counter()
        with full_parameters(model):
            if not is_main():
                return None
            path = StagedWeights(self.directory, run, claim).write(model)
        staging_seconds = time.perf_counter() - started
        updates = on_every_server(
            self.servers,
            lambda server: PUSH_RETRY.call(
                f"weight push to {server.base_url}",
                lambda: server.update_weights(path, version, run=run, timeout=timeout),
                (GenerationError,),  # a failed update leaves the old weights served: loading again is safe
            ),
        )
        slowest = max(updates, key=lambda update: update.seconds)
        return dataclasses.replace(slowest, staging_seconds=staging_seconds)

    def release(self, run: str, *, claim: str | None = None) -> None:
        if is_main():
            StagedWeights(self.directory, run, claim).remove()  # on tmpfs it holds a model's worth of memory

    def close(self) -> None:
        pass
