"""Moving the learner's weights into the generation service: one module per transport, one shape for all.

``file``: safetensors on storage both can read, loaded in place by the worker extension (CPU and GPU).
``nccl``: vLLM's native NCCL broadcast from the learner's GPU to the generation GPUs (CUDA only).

A transport is bound to one model when it is made; the learner pushes a version and waits until generation
serves it.
"""

from __future__ import annotations

from typing import Protocol

from cfpo.clients.generation import WeightUpdate


class WeightSync(Protocol):
    def push(self, version: int, *, run: str | None = None, timeout: float = 120.0) -> WeightUpdate:
        """Have generation serve the bound model's current weights as ``run``'s ``version``; blocks until it does."""
        ...

    def close(self) -> None:
        """Release what the transport holds (a staged file, an NCCL group)."""
        ...
