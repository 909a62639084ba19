"""``cfpo serve learner``: the DeepSpeed learner.

Two ways to run it: ``--spec SPEC.yaml --run-id ID --run-dir DIR`` trains one run started by hand; ``--worker``
takes runs queued through the control API one at a time, heartbeating, until stopped.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from pathlib import Path

import typer

from cfpo.clients.generation import GenerationClient
from cfpo.metrics import LEARNER_METRICS, PrometheusRecorder
from cfpo.queue import QueueSettings, RolloutQueue
from cfpo.clients.reward import RewardClient
from cfpo.run_spec import RunSpec
from cfpo.entrypoint import load_or_exit
from cfpo.registry import Heartbeat, RunRegistry, RunStateError

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


def main(
    spec: Path = typer.Option(None, help="run spec (YAML), for one run started by hand"),
    run_id: str = typer.Option(None, help="the run's id (its Redis keys are run:<id>:...)"),
    run_dir: Path = typer.Option(None, help="metrics, checkpoints and weights of the run go here"),
    resume: bool = typer.Option(False, help="continue from the run directory's latest checkpoint"),
    worker: bool = typer.Option(False, help="take queued runs from the control API's registry instead"),
    runs_dir: Path = typer.Option(Path("runs"), help="worker mode: each run's directory is RUNS_DIR/<run id>"),
    generation_url: str = typer.Option("http://127.0.0.1:8000", envvar="CFPO_GENERATION_URL"),
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0", envvar="REDIS_URL"),
    reward_url: str = typer.Option(None, envvar="CFPO_REWARD_URL",
                                   help="reward service for held-out evaluations (unset: none)"),
    metrics_port: int = typer.Option(0, help="serve /metrics on this port (0: off)"),
    metrics_host: str = typer.Option("127.0.0.1", help="address /metrics listens on (containers: 0.0.0.0)"),
    data_timeout: float = typer.Option(600.0, help="seconds to wait for a step's rollouts before failing"),
    threads: int = typer.Option(None, min=1, envvar="CFPO_LEARNER_THREADS",
                                help="CPU threads to train with (default: every core, trainer/threads.py)"),
    weights_dir: Path = typer.Option(None, envvar="CFPO_WEIGHTS_DIR",
                                     help="where weights are staged for generation to load (default: the run "
                                          "directory's weights/); a tmpfs generation can read, such as /dev/shm, "
                                          "makes each push cheaper"),
) -> None:
    """Train runs from their rollout streams."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    recorder = PrometheusRecorder(LEARNER_METRICS)
    if metrics_port:
        recorder.serve(metrics_port, metrics_host)
    generation = GenerationClient(generation_url)
    rewards = RewardClient(reward_url) if reward_url else None
    if worker:
        _serve_queued_runs(runs_dir, redis_url, generation, rewards, recorder, data_timeout, threads, weights_dir)
        return
    if spec is None or run_id is None or run_dir is None:
        typer.echo("error: --spec, --run-id and --run-dir are needed for one run (or use --worker)", err=True)
        raise typer.Exit(2)
    run_spec = load_or_exit(RunSpec, spec)
    _train(run_spec, run_id, run_dir, redis_url, generation, rewards, recorder, data_timeout, resume, control=None,
           threads=threads, weights_dir=weights_dir)


def _train(spec: RunSpec, run_id: str, run_dir: Path, redis_url: str, generation: GenerationClient,
           rewards: RewardClient | None, recorder: PrometheusRecorder, data_timeout: float, resume: bool,
           control: RegistryControl | None, threads: int | None, weights_dir: Path | None) -> str:
    import torch

    from trainer.service import LearnerService
    from trainer.threads import learner_threads

    torch.set_num_threads(learner_threads(threads))
    log.info("run %s: training with %d CPU threads", run_id, torch.get_num_threads())
    with RolloutQueue(run_id, QueueSettings(redis_url=redis_url, max_depth=spec.queue_capacity)) as queue:
        service = LearnerService(spec, run_id, run_dir, queue, generation, recorder, data_timeout=data_timeout,
                                 control=control, rewards=rewards, weights_dir=weights_dir)
        return service.run(resume=resume)


def _serve_queued_runs(runs_dir: Path, redis_url: str, generation: GenerationClient, rewards: RewardClient | None,
                       recorder: PrometheusRecorder, data_timeout: float, threads: int | None,
                       weights_dir: Path | None, poll_seconds: float = 1.0) -> None:
    name = f"learner-{socket.gethostname()}"
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    with RunRegistry(redis_url) as registry:
        log.info("worker %s waiting for queued runs", name)
        while not stopping.is_set():
            claim = registry.claim_next(name)
            if claim is None:
                stopping.wait(poll_seconds)
                continue
            run_dir = runs_dir / claim.run_id
            log.info("claimed run %s -> %s", claim.run_id, run_dir)
            with registry.heartbeating(claim.run_id, name) as heartbeat:
                try:
                    state = _train(claim.spec, claim.run_id, run_dir, redis_url, generation, rewards, recorder,
                                   data_timeout, resume=(run_dir / "checkpoints" / "latest").exists(),
                                   control=RegistryControl(registry, claim.run_id, heartbeat), threads=threads,
                                   weights_dir=weights_dir)
                except Exception as error:  # the run failed; the worker lives on for the next one
                    log.exception("run %s failed", claim.run_id)
                    state, reason = "failed", f"{type(error).__name__}: {error}"
                else:
                    reason = None
            _finish(registry, claim.run_id, state, reason)


def _finish(registry: RunRegistry, run_id: str, state: str, reason: str | None) -> None:
    try:
        registry.finish(run_id, state, reason)
    except RunStateError as error:  # reaped or finished elsewhere meanwhile: the registry already has its end
        log.warning("run %s: %s", run_id, error)


if __name__ == "__main__":
    typer.run(main)
