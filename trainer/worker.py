"""The learner process: one run started by hand, or queued runs taken from the registry one at a time.

A worker claims the oldest queued run, heartbeats while it trains it, and records how it ended; a run that fails
ends that run only, and the worker goes on to the next. Under torchrun, rank 0 alone claims, heartbeats, serves
/metrics and records; it hands each claim to the other ranks, which train beside it. A failed run leaves the
ranks out of step, so there rank 0 records the failure and exits, and the launcher restarts the group.
"""

from __future__ import annotations

import contextlib
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
from cfpo.metrics import LEARNER_METRICS, PrometheusRecorder, forget_run_later
from cfpo.queue import QueueSettings, RolloutQueue
from cfpo.registry import FinalState, Heartbeat, RunRegistry, RunStateError
from cfpo.run_spec import RunSpec
from trainer.distributed import broadcast_from_main, init_distributed, is_main, world_size
from trainer.settings import LearnerSettings
from trainer.weight_sync import WeightSync, open_weight_sync

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
    """The settings, the clients and the weight transport every run of this process trains with."""

    settings: LearnerSettings
    generation: list[GenerationClient]  # every server the weights go to; held-out evaluations use the first
    rewards: RewardClient | None
    recorder: PrometheusRecorder
    weight_sync: WeightSync

    @classmethod
    def start(cls, settings: LearnerSettings) -> LearnerProcess:
        recorder = PrometheusRecorder(LEARNER_METRICS)
        if settings.metrics_port and is_main():
            recorder.serve(settings.metrics_port, settings.metrics_host)
        rewards = RewardClient(settings.reward_url) if settings.reward_url else None
        generation = [GenerationClient(url) for url in settings.generation_urls]
        weight_sync = open_weight_sync(
            settings.weight_transfer,
            generation,
            staging_dir=settings.staging_dir,
            master_address=settings.weight_transfer_address,
            master_port=settings.weight_transfer_port,
        )
        return cls(settings, generation, rewards, recorder, weight_sync)

    def close(self) -> None:
        self.weight_sync.close()
        for server in self.generation:
            server.close()

    def train(
        self, spec: RunSpec, run_id: str, run_dir: Path, resume: bool, control: RegistryControl | None = None
    ) -> Literal["succeeded", "cancelled"]:
        import torch

        from trainer.run_plane import FollowerPlane, MainPlane, RunPaths, RunPlane
        from trainer.threads import learner_threads
        from trainer.training import TrainingRun

        torch.set_num_threads(learner_threads(self.settings.threads))
        log.info("run %s: training with %d CPU threads", run_id, torch.get_num_threads())
        with contextlib.ExitStack() as resources:
            plane: RunPlane = FollowerPlane()
            if is_main():
                queue_settings = QueueSettings(redis_url=self.settings.redis_url, max_depth=spec.queue_capacity)
                queue = resources.enter_context(RolloutQueue(run_id, queue_settings))
                plane = MainPlane(
                    spec,
                    run_id,
                    RunPaths(run_dir),
                    queue,
                    self.recorder,
                    self.generation[0],  # after a push every server serves the same version
                    data_timeout=self.settings.data_timeout,
                    control=control,
                    rewards=self.rewards,
                )
            return TrainingRun(spec, run_id, run_dir, plane, self.weight_sync).train(resume=resume)


@dataclass(frozen=True)
class Assignment:
    """What rank 0 hands the other ranks at each poll of the registry: a run to train, or the end."""

    run_id: str | None = None
    spec: RunSpec | None = None
    resume: bool = False
    stop: bool = False


def serve(settings: LearnerSettings) -> None:
    """Train the one run the settings name, or, with ``worker``, queued runs until SIGTERM."""
    if world_size() > 1:
        init_distributed()  # the ranks talk from the start (a worker's claims), not only once a run begins
    process = LearnerProcess.start(settings)
    try:
        if not settings.worker:
            assert settings.spec is not None and settings.run_id is not None and settings.run_dir is not None
            process.train(load_or_exit(RunSpec, settings.spec), settings.run_id, settings.run_dir, settings.resume)
        elif is_main():
            serve_queued_runs(process)
        else:
            follow_queued_runs(process)
    finally:
        process.close()


def _stop_on_sigterm() -> threading.Event:
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    return stopping


def serve_queued_runs(process: LearnerProcess, poll_seconds: float = 1.0) -> None:
    name = f"learner-{socket.gethostname()}"
    stopping = _stop_on_sigterm()
    with RunRegistry(process.settings.redis_url) as registry:
        log.info("worker %s waiting for queued runs", name)
        while True:
            claim = None if stopping.is_set() else registry.claim_next(name)
            if claim is None:
                broadcast_from_main(Assignment(stop=stopping.is_set()))
                if stopping.is_set():
                    return
                stopping.wait(poll_seconds)
                continue
            run_dir = process.settings.runs_dir / claim.run_id
            resume = (run_dir / "checkpoints" / "latest").exists()
            broadcast_from_main(Assignment(claim.run_id, claim.spec, resume))
            log.info("claimed run %s -> %s", claim.run_id, run_dir)
            state: FinalState
            reason: str | None
            with registry.heartbeating(claim.run_id, name) as heartbeat:
                try:
                    state = process.train(
                        claim.spec, claim.run_id, run_dir, resume, RegistryControl(registry, claim.run_id, heartbeat)
                    )
                except Exception as error:  # the run failed; the worker lives on for the next one
                    log.exception("run %s failed", claim.run_id)
                    state, reason = "failed", f"{type(error).__name__}: {error}"
                else:
                    reason = None
            _finish(registry, claim.run_id, state, reason)
            forget_run_later(process.recorder, claim.run_id, process.settings.metrics_retention_s)
            if state == "failed" and world_size() > 1:
                raise SystemExit(f"run {claim.run_id} failed; the learner's ranks restart together")


def follow_queued_runs(process: LearnerProcess) -> None:
    """A rank other than 0: train each run rank 0 claims, until it says stop."""
    _stop_on_sigterm()  # the launcher signals every rank; rank 0 decides when the group stops
    while not (assignment := broadcast_from_main(Assignment())).stop:
        if assignment.run_id is not None and assignment.spec is not None:
            run_dir = process.settings.runs_dir / assignment.run_id
            process.train(assignment.spec, assignment.run_id, run_dir, assignment.resume)


def _finish(registry: RunRegistry, run_id: str, state: FinalState, reason: str | None) -> None:
    try:
        registry.finish(run_id, state, reason)
    except RunStateError as error:  # reaped or finished elsewhere meanwhile: the registry already has its end
        log.warning("run %s: %s", run_id, error)
