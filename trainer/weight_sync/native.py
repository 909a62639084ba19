"""vLLM's native weight transfer (its NCCL and IPC engines), driven the same way whichever backend carries it.

The servers run with ``--weight-transfer-config '{"backend": ...}'`` (``cfpo serve generation --weight-transfer``).
The engine is made at the first push (generation may start after the learner) and kept for the process: every
run's model is sent through it. Each push runs on every learner rank; rank 0 alone holds the servers' control
plane: pause, send, label the version, resume. vLLM's engine talks to one server; ``ServerFanOut`` makes several
independent servers one: each gets its own ``rank_offset`` in one NCCL group, so one broadcast reaches them all
(as PRIME-RL and PipelineRL do). A failed send leaves vLLM's side of an NCCL group unusable (its engine says so),
so the error says to restart generation.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from cfpo.clients.generation import GenerationClient, PolicyVersion, WeightUpdate, WeightUpdateError
from trainer.distributed import is_main
from trainer.weight_sync import full_parameters, on_every_server

if TYPE_CHECKING:
    from vllm.distributed.weight_transfer.base import TrainerInitInfo, TrainerWeightTransferEngine


class ServerFanOut:
    """vLLM's ``VLLMWeightSyncClient`` over several servers: every call reaches all of them at once.

    ``world_sizes``: each server's workers. An NCCL init (which carries ``rank_offset``) places server i's workers
    after rank 0 and the servers before it.
    """

    def __init__(self, servers: list[GenerationClient], world_sizes: list[int]):
        from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient

        self.servers, self.world_sizes = servers, world_sizes
        self.clients = {s.base_url: HTTPVLLMWeightSyncClient(s.base_url) for s in servers}

    def rank_offsets(self) -> list[int]:
        return [1 + sum(self.world_sizes[:i]) for i in range(len(self.servers))]

    def _each(self, call: Callable[[Any, int], None]) -> None:
        offsets = dict(zip((s.base_url for s in self.servers), self.rank_offsets()))
        on_every_server(self.servers, lambda s: call(self.clients[s.base_url], offsets[s.base_url]))

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        def init(client: Any, offset: int) -> None:
            info = {**init_info, "rank_offset": offset} if "rank_offset" in init_info else init_info
            client.init_weight_transfer_engine(info)

        self._each(init)

    def start_weight_update(self) -> None:
        self._each(lambda client, _: client.start_weight_update())

    def update_weights(self, update_info: Any) -> None:
        self._each(lambda client, _: client.update_weights(update_info))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._each(lambda client, _: client.finish_weight_update(weight_version))

    def shutdown_weight_transfer_engine(self) -> None:
        self._each(lambda client, _: client.shutdown_weight_transfer_engine())


def _module_source():
    """A vLLM ``WeightSource`` whose module is the one being pushed now (runs change it)."""
    from vllm.distributed.weight_transfer.base import ModuleSource

    class ReboundModuleSource(ModuleSource):
        def __init__(self) -> None:
            super().__init__(torch.nn.Module())

        def bind(self, module: torch.nn.Module) -> None:
            self._module = module

    return ReboundModuleSource()


class NativeWeightSync:
    """A ``WeightSync`` over vLLM's trainer-side engine for ``backend``; ``init_info`` makes the engine's init info
    for the servers' total world size (rank 0 asks each server for its own)."""

    def __init__(self, servers: list[GenerationClient], backend: str, init_info: Callable[[int], TrainerInitInfo]):
        self.servers, self.backend, self.init_info = servers, backend, init_info
        self.source = _module_source()
        self.engine: TrainerWeightTransferEngine | None = None
        self.fan_out: ServerFanOut | None = None

    def push(
        self, model: torch.nn.Module, version: int, *, run: str, claim: str | None = None, timeout: float = 120.0
    ) -> WeightUpdate | None:
        self.source.bind(model)
        engine = self._engine()
        started = time.perf_counter()
        with full_parameters(model):
            if not is_main():
                engine.send_weights()  # the other ranks only iterate the weights, in step with rank 0
                return None
            with contextlib.ExitStack() as paused:
                for server in self.servers:
                    paused.enter_context(server.paused(timeout=timeout))
                try:
                    engine.send_weights()
                except Exception as error:
                    raise WeightUpdateError(
                        f"{self.backend} weight transfer failed ({error}); vLLM cannot reuse the group: "
                        "restart generation"
                    ) from error
                on_every_server(self.servers, lambda server: server.label_version(PolicyVersion(run, version)))
            # Inside the gather: outside it a ZeRO-3 parameter is an empty placeholder, and would count 0 bytes.
            bytes_sent = sum(p.numel() * p.element_size() for p in model.parameters())
        return WeightUpdate(version=version, seconds=time.perf_counter() - started, bytes=bytes_sent)

    def release(self, run: str, *, claim: str | None = None) -> None:
        pass

    def close(self) -> None:
        if self.engine is None:
            return
        self.engine.shutdown()
        if self.fan_out is not None:
            self.fan_out.shutdown_weight_transfer_engine()
        self.engine = self.fan_out = None

    def _engine(self) -> TrainerWeightTransferEngine:
        if self.engine is None:
            from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

            world_sizes = [server.world_size() for server in self.servers] if is_main() else []
            self.fan_out = ServerFanOut(self.servers, world_sizes) if is_main() else None
            self.engine = WeightTransferTrainerFactory.trainer_init(
                self.init_info(1 + sum(world_sizes)),
                client=self.fan_out,  # type: ignore[arg-type]  # None on ranks that never call it
                source=self.source,
            )
        return self.engine
