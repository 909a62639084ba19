"""Moving the learner's weights into the generation service: one module per transport, one shape for all.

``file``: safetensors on storage both can read, loaded in place by the worker extension (CPU and GPU).
``nccl``: vLLM's native NCCL broadcast from the learner's GPU to the generation GPUs (CUDA only).
``ipc``: vLLM's native CUDA IPC, for a learner and a generation server sharing one GPU (CUDA only).

Several independent generation servers get every push at once, and the same version label. A learner process
holds one transport for all its runs (an NCCL group is formed once). Every rank calls ``push``:
a ZeRO-3 model is gathered collectively, and vLLM's engines iterate the weights on every rank. Rank 0 alone talks
to generation, and waits until it serves the pushed version.
"""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import torch

from cfpo.clients.generation import GenerationClient, WeightUpdate, WeightUpdateError
from cfpo.config import WeightTransfer


class WeightSync(Protocol):
    def push(
        self, model: torch.nn.Module, version: int, *, run: str, claim: str | None = None, timeout: float = 120.0
    ) -> WeightUpdate | None:
        """Have generation serve ``model``'s weights as ``run``'s ``version``; blocks until it does. Rank 0 returns
        what the update cost, the other ranks None. ``claim``: the learner's claim of the run, so that what it
        stages is its own (a stale learner's release never deletes the holder's file)."""
        ...

    def release(self, run: str, *, claim: str | None = None) -> None:
        """Drop what the transport keeps for the claim of a run that ended (a staged file)."""
        ...

    def close(self) -> None:
        """Release what the transport holds for the process (an NCCL group)."""
        ...


def open_weight_sync(
    transfer: WeightTransfer,
    servers: list[GenerationClient],
    *,
    staging_dir: Path,
    master_address: str,
    master_port: int,
) -> WeightSync:
    """The transport ``transfer`` names, for one learner process."""
    if transfer == "file":
        from trainer.weight_sync.file import FileWeightSync

        return FileWeightSync(servers, staging_dir)
    if transfer == "nccl":
        from trainer.weight_sync.nccl import nccl_weight_sync

        return nccl_weight_sync(servers, master_address=master_address, master_port=master_port)
    from trainer.weight_sync.ipc import ipc_weight_sync

    return ipc_weight_sync(servers)


@contextlib.contextmanager
def full_parameters(model: torch.nn.Module) -> Iterator[None]:
    """Every parameter whole inside (ZeRO-3 partitions them: outside, each rank holds an empty placeholder).
    A collective under ZeRO-3, so every rank enters it; nothing to do at the other stages."""
    parameters = list(model.parameters())
    if not any(hasattr(p, "ds_id") for p in parameters):  # DeepSpeed marks the parameters it partitions
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(parameters, modifier_rank=None):
        yield


Result = typing.TypeVar("Result")


def on_every_server(servers: list[GenerationClient], call: Callable[[GenerationClient], Result]) -> list[Result]:
    """``call`` on every server at once (an NCCL update must reach all of them together); the first failure is
    raised as a ``WeightUpdateError`` naming its server, once every call has returned."""
    if len(servers) == 1:
        return [call(servers[0])]
    with ThreadPoolExecutor(max_workers=len(servers), thread_name_prefix="weight-sync") as pool:
        futures = [pool.submit(call, server) for server in servers]
        for server, future in zip(servers, futures):
            if (error := future.exception()) is not None:
                raise WeightUpdateError(f"{server.base_url}: {error}") from error
        return [future.result() for future in futures]
