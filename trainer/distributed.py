"""The torch.distributed process group the DeepSpeed engine runs in.

Under the deepspeed launcher (RANK/WORLD_SIZE in the environment) the group spans its processes, NCCL on GPUs.
A lone process joins a one-member group through a file rendezvous, which listens on no network interface.
"""

from __future__ import annotations

import logging
import os
import tempfile

import torch


def init_distributed() -> None:
    """Join (or form) the process group once per process."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
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
        verbose=False,
    )


def quiet_deepspeed() -> None:
    """DeepSpeed logs every config key at INFO; users need its warnings only."""
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)


if __name__ == "__main__":
    # `python -m trainer.distributed`: warms DeepSpeed's compiled communication op (used by the set-up).
    quiet_deepspeed()
    init_distributed()
    print("process group ready:", torch.distributed.get_backend())
