"""vLLM's native transports (nccl, ipc) report what a push sent: under ZeRO-3 the bytes are counted while the
parameters are gathered, not after, when each is an empty placeholder again."""

import contextlib

import pytest

from cfpo.models import build_tiny_model
from trainer.weight_sync.native import NativeWeightSync


class FakeServer:
    """The control plane a push drives: pause, label, resume (no server: the engine below sends nothing)."""

    def __init__(self):
        self.labels = []

    @contextlib.contextmanager
    def paused(self, *, timeout: float):
        yield

    def label_version(self, version):
        self.labels.append(version.label)


class FakeEngine:
    def __init__(self, source):
        self.source, self.sent_numel = source, None

    def send_weights(self):
        self.sent_numel = sum(p.numel() for p in self.source._module.parameters())


@pytest.mark.slow
def test_a_zero3_push_counts_the_gathered_bytes(tmp_path):
    from cfpo.config import LearnerConfig
    from trainer.learner import Learner

    learner = Learner(build_tiny_model(tmp_path / "model", seed=1), LearnerConfig(batch_size=4, zero_stage=3))
    module = learner.engine.module
    assert all(p.numel() == 0 for p in module.parameters())  # partitioned outside a gather
    server = FakeServer()
    sync = NativeWeightSync([server], "nccl", init_info=lambda world_size: None)
    sync.engine = engine = FakeEngine(sync.source)

    update = sync.push(module, 3, run="zero3", timeout=30.0)

    whole = sum(p.ds_numel for p in module.parameters())
    assert engine.sent_numel == whole  # the engine saw whole tensors
    assert update.bytes == whole * 4 > 0  # fp32 on CPU
    assert server.labels == ["zero3@3"]
