"""The learner process: one run started by hand, or queued runs taken from the registry one at a time.

A worker claims the oldest queued run, heartbeats while it trains it, and records how it ended; a run that fails
ends that run only, and the worker goes on to the next. Under torchrun, rank 0 alone claims, heartbeats, serves
/metrics and records; it hands each claim to the other ranks, which train beside it. A failed run leaves the
ranks out of step, so there rank 0 records the failure and exits, and the launcher restarts the group.

SIGTERM stops the run at the next step boundary (or while waiting for its data) with a checkpoint: a worker hands
its run back to the queue for the next claim to resume, a run started by hand exits with status 143 and resumes
with ``--resume``. A claim of a run that was handed back, or requeued after its learner went silent, resumes from
the checkpoint in the run directory, which every learner worker shares.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cfpo.clients.generation import GenerationClient
from cfpo.clients.reward import RewardClient
from cfpo.entrypoint import load_or_exit
from cfpo.metrics import LEARNER_METRICS, PrometheusRecorder, forget_run_later
from cfpo.queue import QueueSettings, RolloutQueue
from cfpo.registry import Claim, FinalState, Heartbeat, LeaseLost, RunRegistry, RunStateError
from cfpo.run_spec import RunSpec
from trainer.distributed import broadcast_from_main, init_distributed, is_main, world_size
from trainer.settings import LearnerSettings
from trainer.weight_sync import WeightSync, open_weight_sync

if TYPE_CHECKING:
    from trainer.run_plane import RunControl  # its module loads torch; the process loads it once training starts

log = logging.getLogger("cfpo.learner")


class RegistryControl:
    """A claimed run's say: record each step and acknowledge entries under the claim's token, stop when cancelled,
    when SIGTERM came or once the run is no longer this claim's (``cause`` says which), and push only while the
    claim holds."""

    def __init__(self, registry: RunRegistry, claim: Claim, heartbeat: Heartbeat, stopping: threading.Event):
        self.registry, self.run_id, self.claim = registry, claim.run_id, claim.lease
        self.heartbeat, self.stopping = heartbeat, stopping
        self.cause: Literal["lost", "stopping", "cancelled"] | None = None

    def begin(self, start_step: int) -> None:
        self.registry.rewind(self.run_id, self.claim, start_step)

    def record(self, step: int, version: int, metrics: dict) -> None:
        self.registry.record_step(self.run_id, self.claim, step, version, metrics)

    def acknowledge(self, queue: RolloutQueue, entry_ids: list[str]) -> None:
        self.registry.acknowledge(self.run_id, self.claim, entry_ids)  # the lease check and the XACK in one script

    def stop_reason(self) -> str | None:
        if self.heartbeat.lost.is_set():
            self.cause = "lost"
            return f"the run is no longer this worker's: {self.heartbeat.reason}"
        if self.stopping.is_set():
            self.cause = "stopping"
            return "the learner is stopping (SIGTERM)"
        if self.registry.is_cancelled(self.run_id):
            self.cause = "cancelled"
            return "cancelled through the API"
        return None

    def lost(self) -> bool:
        return self.cause == "lost" or self.heartbeat.lost.is_set()

    def fence(self) -> None:
        self.registry.heartbeat(self.run_id, self.claim)  # raises LeaseLost once another claim holds the run


class StandaloneControl:
    """A run started by hand: nothing to record elsewhere; it stops on SIGTERM. Its claim is this process's."""

    def __init__(self, stopping: threading.Event):
        self.stopping = stopping
        self.claim = uuid.uuid4().hex[:12]

    def begin(self, start_step: int) -> None:
        pass

    def record(self, step: int, version: int, metrics: dict) -> None:
        pass

    def acknowledge(self, queue: RolloutQueue, entry_ids: list[str]) -> None:
        queue.ack(entry_ids)

    def stop_reason(self) -> str | None:
        return "the learner is stopping (SIGTERM)" if self.stopping.is_set() else None

    def lost(self) -> bool:
        return False

    def fence(self) -> None:
        pass


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
        self, spec: RunSpec, run_id: str, run_dir: Path, resume: bool, control: RunControl
    ) -> Literal["succeeded", "stopped"]:
        """Train the run; ``control`` is rank 0's (the other ranks follow rank 0's decisions)."""
        import torch

        from trainer.entry_check import RunEntryCheck
        from trainer.run_plane import FollowerPlane, MainPlane, RunPaths, RunPlane
        from trainer.threads import learner_threads
        from trainer.training import TrainingRun

        torch.set_num_threads(learner_threads(self.settings.threads))
        log.info("run %s: training with %d CPU threads", run_id, torch.get_num_threads())
        with contextlib.ExitStack() as resources:
            plane: RunPlane = FollowerPlane()
            if is_main():
                queue_settings = QueueSettings(redis_url=self.settings.redis_url, max_depth=spec.queue_capacity)
                queue = resources.enter_context(RolloutQueue(run_id, queue_settings, RunEntryCheck.for_run(spec)))
                plane = MainPlane(
                    spec,
                    run_id,
                    RunPaths(run_dir),
                    queue,
                    self.recorder,
                    self.generation[0],  # after a push every server serves the same version
                    data_timeout=self.settings.data_timeout,
                    disk_wait_s=self.settings.disk_wait_s,
                    control=control,
                    rewards=self.rewards,
                )
            push_timeout = self.settings.pause_timeout_for(spec.rollout.max_tokens)
            training = TrainingRun(spec, run_id, run_dir, plane, self.weight_sync, push_timeout=push_timeout)
            return training.train(resume=resume)


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
        # The ranks talk from the start (a worker's claims), not only once a run begins.
        init_distributed(timeout=settings.collective_timeout)
    stopping = threading.Event()
    # On every rank (the launcher signals them all); rank 0's decides, the others follow it.
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    process = LearnerProcess.start(settings)
    try:
        if not settings.worker:
            assert settings.spec is not None and settings.run_id is not None and settings.run_dir is not None
            spec, control = load_or_exit(RunSpec, settings.spec), StandaloneControl(stopping)
            if process.train(spec, settings.run_id, settings.run_dir, settings.resume, control) == "stopped":
                log.info("run %s stopped; --resume goes on from its last checkpoint", settings.run_id)
                raise SystemExit(128 + signal.SIGTERM)
        elif is_main():
            serve_queued_runs(process, stopping)
        else:
            follow_queued_runs(process, stopping)
    finally:
        process.close()


def serve_queued_runs(process: LearnerProcess, stopping: threading.Event, poll_seconds: float = 1.0) -> None:
    name = f"learner-{socket.gethostname()}-{os.getpid()}"  # pods share no host name; processes on one host do
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
            log.info("claimed run %s (lease %d) -> %s%s", claim.run_id, claim.number, run_dir, " (resuming)" * resume)
            failed = _train_claim(process, registry, claim, run_dir, resume, stopping, name)
            forget_run_later(process.recorder, claim.run_id, process.settings.metrics_retention_s)
            if failed and world_size() > 1:
                raise SystemExit(f"run {claim.run_id} failed; the learner's ranks restart together")


def _train_claim(
    process: LearnerProcess,
    registry: RunRegistry,
    claim: Claim,
    run_dir: Path,
    resume: bool,
    stopping: threading.Event,
    name: str,
) -> bool:
    """Train a claimed run and tell the registry how it went: ended, handed back or, once taken over, nothing.
    Returns whether it failed."""
    with registry.heartbeating(claim.run_id, claim.lease) as heartbeat:
        control = RegistryControl(registry, claim, heartbeat, stopping)
        try:
            outcome = process.train(claim.spec, claim.run_id, run_dir, resume, control)
        except LeaseLost as lost:
            log.warning("run %s: %s; leaving it to its new holder", claim.run_id, lost)
            return False
        except Exception as error:  # the run failed; the worker lives on for the next one
            log.exception("run %s failed", claim.run_id)
            _finish(registry, claim, "failed", f"{type(error).__name__}: {error}")
            return True
    if outcome == "succeeded" or control.cause == "cancelled":
        _finish(registry, claim, "cancelled" if outcome == "stopped" else "succeeded", None)
    elif control.cause == "stopping":
        try:
            registry.release(
                claim.run_id, claim.lease, f"learner worker {name} stopped (SIGTERM); resume from its last checkpoint"
            )
            log.info("run %s handed back to the queue, to be resumed from its checkpoint", claim.run_id)
        except RunStateError as error:
            log.warning("run %s: %s", claim.run_id, error)
    else:
        log.warning("run %s: no longer this worker's; leaving it", claim.run_id)
    return False


def follow_queued_runs(process: LearnerProcess, stopping: threading.Event) -> None:
    """A rank other than 0: train each run rank 0 claims, until it says stop."""
    while not (assignment := broadcast_from_main(Assignment())).stop:
        if assignment.run_id is not None and assignment.spec is not None:
            run_dir = process.settings.runs_dir / assignment.run_id
            control = StandaloneControl(stopping)  # unused: rank 0's decisions come by broadcast
            process.train(assignment.spec, assignment.run_id, run_dir, assignment.resume, control)


def _finish(registry: RunRegistry, claim: Claim, state: FinalState, reason: str | None) -> None:
    try:
        registry.finish(claim.run_id, claim.lease, state, reason)
    except RunStateError as error:  # reaped or finished elsewhere meanwhile: the registry already has its end
        log.warning("run %s: %s", claim.run_id, error)
