"""NCCL transport (GPU only): vLLM's native weight transfer, from the learner's GPU straight into the workers.

The generation server must run with ``--weight-transfer-config '{"backend": "nccl"}'`` (``cfpo serve
generation`` adds it on CUDA). The learner's rank 0 joins an NCCL group with every generation worker once; each
push then broadcasts the parameters while the server is paused, and labels the new version. On CPU the
backend fails with "Cannot access accelerator device": use the file transport there.
"""

from __future__ import annotations

import time

import torch

from cfpo.clients.generation import GenerationClient, PolicyVersion, WeightUpdate


class NcclWeightSync:
    """The NCCL transport (``WeightSync``): the learner is rank 0 of a group with every generation worker."""

    def __init__(
        self,
        client: GenerationClient,
        model: torch.nn.Module,
        *,
        master_address: str,
        master_port: int,
        generation_world_size: int = 1,
    ):
        from vllm.distributed.weight_transfer.base import ModuleSource
        from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine

        self.client = client
        self.bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        init_info = NCCLTrainerInitInfo(
            master_address=master_address, master_port=master_port, world_size=1 + generation_world_size, rank=0
        )
        self.engine = NCCLTrainerWeightTransferEngine.trainer_init(
            init_info, client=HTTPVLLMWeightSyncClient(client.base_url), source=ModuleSource(model)
        )

    def push(self, version: int, *, run: str | None = None, timeout: float = 120.0) -> WeightUpdate:
        started = time.perf_counter()
        with self.client.paused(timeout=timeout):
            self.engine.send_weights()
            self.client.label_version(PolicyVersion(run, version))
        return WeightUpdate(version=version, seconds=time.perf_counter() - started, bytes=self.bytes)

    def close(self) -> None:
        self.engine.shutdown()
