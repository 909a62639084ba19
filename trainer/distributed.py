"""The torch.distributed process group the DeepSpeed engine runs in, and what the learner's ranks share over it.

Under torchrun or the deepspeed launcher (RANK/WORLD_SIZE in the environment) the group spans their processes,
NCCL on GPUs, gloo on CPU. A lone process joins a one-member group through a file rendezvous, which listens on no
network interface. Rank 0 (the main rank) alone talks to Redis, generation and the registry; it hands the other
ranks what they need with ``broadcast_from_main``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import typing
from datetime import timedelta

import torch

Value = typing.TypeVar("Value")


def init_distributed(timeout: timedelta | None = None) -> None:
    """Join (or form) the process group once per process. ``timeout``: how long one collective may wait before the
    group fails (the learner's settings put it above rank 0's longest waits); None: DeepSpeed's 10 minutes."""
    import deepspeed
    import torch.distributed as dist
    from deepspeed.constants import default_pg_timeout

    if dist.is_available() and dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    timeout = timeout or default_pg_timeout
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # before the first collective
        deepspeed.init_distributed(dist_backend=backend, timeout=timeout, verbose=False)
        return
    os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed's engine asks for it even in a lone process
    with tempfile.NamedTemporaryFile(prefix="cfpo-rendezvous-", delete=False) as rendezvous:
        pass
    os.unlink(rendezvous.name)  # the store creates it; a stale file would hang the rendezvous
    deepspeed.init_distributed(
        dist_backend=backend,
        init_method=f"file://{rendezvous.name}",
        rank=0,
        world_size=1,
        auto_mpi_discovery=False,
        timeout=timeout,
        verbose=False,
    )


def launched_ranks() -> tuple[int, int]:
    """(rank, world size) as the launcher set them ((0, 1) for a lone process): known before the group forms."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else launched_ranks()[0]


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else launched_ranks()[1]


def is_main() -> bool:
    return rank() == 0


def broadcast_from_main(value: Value) -> Value:
    """Rank 0's ``value`` on every rank (the others pass anything, typically None)."""
    if world_size() == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gathered(value: Value) -> list[Value]:
    """Every rank's ``value``, in rank order, on every rank."""
    if world_size() == 1:
        return [value]
    import torch.distributed as dist

    values: list[typing.Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def quiet_deepspeed() -> None:
    """DeepSpeed logs every config key at INFO; users need its warnings only."""
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)


if __name__ == "__main__":
    # `python -m trainer.distributed`: warms DeepSpeed's compiled communication op (used by the set-up).
    quiet_deepspeed()
    init_distributed()
    print("process group ready:", torch.distributed.get_backend())
