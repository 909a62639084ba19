"""NCCL transport (GPU only): vLLM's native NCCL broadcast, from the learner's rank 0 straight into every worker
of every generation server.

Rank 0 and the servers' workers form one group: world size 1 + the sum of the servers' ``/get_world_size``
(tensor x pipeline x data parallel each), the workers from rank 1 (``native.ServerFanOut`` gives each server its
offset). The learner's rank 0 listens at ``master_address:master_port``, which the generation workers must reach
(in Kubernetes: the learner pod's IP). One GPU cannot hold two ranks of a group: a learner sharing its GPU with
generation uses ``ipc``. On CPU vLLM refuses with "Cannot access accelerator device": the settings refuse it first.
"""

from __future__ import annotations

from cfpo.clients.generation import GenerationClient
from trainer.distributed import rank
from trainer.weight_sync.native import NativeWeightSync


def nccl_weight_sync(servers: list[GenerationClient], *, master_address: str, master_port: int) -> NativeWeightSync:
    def init_info(world_size: int):
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        return NCCLTrainerInitInfo(
            master_address=master_address, master_port=master_port, world_size=world_size, rank=rank()
        )

    return NativeWeightSync(servers, "nccl", init_info)
