"""The learner process: one run started by hand, or queued runs taken from the registry one at a time.

A worker claims the oldest queued run, heartbeats while it trains it, and records how it ended; a run that fails
ends that run only, and the worker goes on to the next.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cfpo.clients.generation import GenerationClient
from cfpo.clients.reward import RewardClient
from cfpo.entrypoint import load_or_exit
from cfpo.metrics import LEARNER_METRICS, PrometheusRecorder
from cfpo.queue import QueueSettings, RolloutQueue
from cfpo.registry import FinalState, Heartbeat, RunRegistry, RunStateError
from cfpo.run_spec import RunSpec
from trainer.settings import LearnerSettings

log = logging.getLogger("cfpo.learner")


class RegistryControl:
    """The learner's view of its run in the registry: record each step, stop when cancelled or no longer ours."""

    def __init__(self, registry: RunRegistry, run_id: str, heartbeat: Heartbeat):
        self.registry, self.run_id, self.heartbeat = registry, run_id, heartbeat

    def record(self, step: int, version: int, metrics: dict) -> None:
        self.registry.record_step(self.run_id, step, version, metrics)

    def stop_reason(self) -> str | None:
        if self.heartbeat.lost.is_set():
            return f"the run is no longer this worker's: {self.heartbeat.reason}"
        return "cancelled through the API" if self.registry.is_cancelled(self.run_id) else None


@dataclass(frozen=True)
class LearnerProcess:
    """The settings and the clients every run of this process trains with."""

    settings: LearnerSettings
    generation: GenerationClient
    rewards: RewardClient | None
    recorder: PrometheusRecorder

    @classmethod
    def start(cls, settings: LearnerSettings) -> LearnerProcess:
        recorder = PrometheusRecorder(LEARNER_METRICS)
        if settings.metrics_port:
            recorder.serve(settings.metrics_port, settings.metrics_host)
        rewards = RewardClient(settings.reward_url) if settings.reward_url else None
        return cls(settings, GenerationClient(settings.generation_url), rewards, recorder)

    def train(
        self, spec: RunSpec, run_id: str, run_dir: Path, resume: bool, control: RegistryControl | None = None
    ) -> Literal["succeeded", "cancelled"]:
        import torch

        from trainer.threads import learner_threads
        from trainer.training import TrainingRun

        torch.set_num_threads(learner_threads(self.settings.threads))
        log.info("run %s: training with %d CPU threads", run_id, torch.get_num_threads())
        queue_settings = QueueSettings(redis_url=self.settings.redis_url, max_depth=spec.queue_capacity)
        with RolloutQueue(run_id, queue_settings) as queue:
            run = TrainingRun(
                spec,
                run_id,
                run_dir,
                queue,
                self.generation,
                self.recorder,
                data_timeout=self.settings.data_timeout,
                control=control,
                rewards=self.rewards,
                weights_dir=self.settings.weights_dir,
            )
            return run.train(resume=resume)


def serve(settings: LearnerSettings) -> None:
    """Train the one run the settings name, or, with ``worker``, queued runs until SIGTERM."""
    process = LearnerProcess.start(settings)
    if not settings.worker:
        assert settings.spec is not None and settings.run_id is not None and settings.run_dir is not None
        process.train(load_or_exit(RunSpec, settings.spec), settings.run_id, settings.run_dir, settings.resume)
        return
    serve_queued_runs(process)


def serve_queued_runs(process: LearnerProcess, poll_seconds: float = 1.0) -> None:
    name = f"learner-{socket.gethostname()}"
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    with RunRegistry(process.settings.redis_url) as registry:
        log.info("worker %s waiting for queued runs", name)
        while not stopping.is_set():
            claim = registry.claim_next(name)
            if claim is None:
                stopping.wait(poll_seconds)
                continue
            run_dir = process.settings.runs_dir / claim.run_id
            log.info("claimed run %s -> %s", claim.run_id, run_dir)
            state: FinalState
            reason: str | None
            with registry.heartbeating(claim.run_id, name) as heartbeat:
                try:
                    state = process.train(
                        claim.spec,
                        claim.run_id,
                        run_dir,
                        resume=(run_dir / "checkpoints" / "latest").exists(),
                        control=RegistryControl(registry, claim.run_id, heartbeat),
                    )
                except Exception as error:  # the run failed; the worker lives on for the next one
                    log.exception("run %s failed", claim.run_id)
                    state, reason = "failed", f"{type(error).__name__}: {error}"
                else:
                    reason = None
            _finish(registry, claim.run_id, state, reason)


def _finish(registry: RunRegistry, run_id: str, state: FinalState, reason: str | None) -> None:
    try:
        registry.finish(run_id, state, reason)
    except RunStateError as error:  # reaped or finished elsewhere meanwhile: the registry already has its end
        log.warning("run %s: %s", run_id, error)
