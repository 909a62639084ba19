"""``cfpo serve rollout``: a rollout worker.

``--spec SPEC.yaml --run-id ID`` serves one run started by hand until it has all its groups; ``--worker`` serves
whichever runs the control API's registry shows running, one after another, until stopped.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import typer

from cfpo.clients.generation import GenerationClient
from cfpo.metrics import ROLLOUT_METRICS, PrometheusRecorder
from cfpo.queue import QueueSettings, RolloutQueue
from cfpo.clients.reward import RewardClient
from cfpo.run_spec import RunSpec
from cfpo.entrypoint import load_or_exit
from cfpo.registry import RunNotFound, RunRegistry
from services.rollout.worker import RolloutWorker

log = logging.getLogger("cfpo.rollout")


def main(
    spec: Path = typer.Option(None, help="run spec (YAML), for one run started by hand"),
    run_id: str = typer.Option(None, help="the run's id (its Redis keys are run:<id>:...)"),
    worker: bool = typer.Option(False, help="serve the runs the control API's registry shows running"),
    generation_url: str = typer.Option("http://127.0.0.1:8000", envvar="CFPO_GENERATION_URL"),
    reward_url: str = typer.Option("http://127.0.0.1:8011", envvar="CFPO_REWARD_URL"),
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0", envvar="REDIS_URL"),
    metrics_port: int = typer.Option(0, help="serve /metrics on this port (0: off)"),
    metrics_host: str = typer.Option("127.0.0.1", help="address /metrics listens on (containers: 0.0.0.0)"),
) -> None:
    """Generate, score and queue groups while staleness admission control allows."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    recorder = PrometheusRecorder(ROLLOUT_METRICS)
    if metrics_port:
        recorder.serve(metrics_port, metrics_host)
    clients = (GenerationClient(generation_url), RewardClient(reward_url))
    stopping = threading.Event()
    if worker:
        _serve_running_runs(redis_url, clients, recorder, stopping)
        return
    if spec is None or run_id is None:
        typer.echo("error: --spec and --run-id are needed for one run (or use --worker)", err=True)
        raise typer.Exit(2)
    run_spec = load_or_exit(RunSpec, spec)
    made = _serve(run_spec, run_id, redis_url, clients, recorder, stopping)
    log.info("done: %d groups", made)


def _serve(spec: RunSpec, run_id: str, redis_url: str, clients, recorder: PrometheusRecorder,
           stopping: threading.Event, still_wanted=lambda: True) -> int:
    with RolloutQueue(run_id, QueueSettings(redis_url=redis_url, max_depth=spec.queue_capacity)) as queue:
        worker = RolloutWorker(spec, run_id, queue, *clients, recorder, still_wanted=still_wanted)
        # SIGTERM ends this run's work and the process; a run that ends elsewhere ends only the former.
        signal.signal(signal.SIGTERM, lambda *_: (stopping.set(), worker.stop.set()))
        return worker.run()


def _serve_running_runs(redis_url: str, clients, recorder: PrometheusRecorder, stopping: threading.Event,
                        poll_seconds: float = 1.0) -> None:
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    finished: set[str] = set()  # runs whose slots this worker saw exhausted
    with RunRegistry(redis_url) as registry:
        log.info("rollout worker waiting for running runs")
        while not stopping.is_set():
            runs = [r for r in registry.list_runs(state="running") if r.id not in finished]
            if not runs:
                stopping.wait(poll_seconds)
                continue
            run = min(runs, key=lambda r: r.created_at)

            def still_running(run_id: str = run.id) -> bool:
                try:
                    return registry.get(run_id).state == "running"
                except RunNotFound:
                    return False

            made = _serve(run.spec, run.id, redis_url, clients, recorder, stopping, still_wanted=still_running)
            log.info("run %s: %d groups from this worker", run.id, made)
            finished.add(run.id)


if __name__ == "__main__":
    typer.run(main)
