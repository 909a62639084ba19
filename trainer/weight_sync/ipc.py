"""IPC transport (GPU only): vLLM's native CUDA IPC, for a learner and a generation server on the same GPU.

The workers map the learner's tensors through CUDA IPC handles, sent pickled over HTTP: the server needs
``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` (``cfpo serve generation --weight-transfer ipc`` sets it). Every learner rank
joins the handle all-gather; rank 0 sends.
"""

from __future__ import annotations

from cfpo.clients.generation import GenerationClient
from trainer.distributed import rank
from trainer.weight_sync.native import NativeWeightSync


def ipc_weight_sync(servers: list[GenerationClient]) -> NativeWeightSync:
    def init_info(world_size: int):  # IPC needs no rendezvous
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        return IPCTrainerInitInfo(rank=rank())

    return NativeWeightSync(servers, "ipc", init_info)
