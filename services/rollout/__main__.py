"""``cfpo serve rollout`` = ``python -m services.rollout``: a rollout worker, from its settings.

``--spec SPEC.yaml --run-id ID`` serves one run started by hand until it has all its groups; ``--worker`` serves
whichever runs the control API's registry shows running, one after another, until stopped.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from cfpo.clients.generation import GenerationPool
from cfpo.clients.reward import RewardClient
from cfpo.entrypoint import Entrypoint, load_or_exit, log_to_stderr
from cfpo.metrics import ROLLOUT_METRICS, PrometheusRecorder, forget_run_later
from cfpo.queue import QueueSettings, RolloutQueue
from cfpo.registry import RunNotFound, RunRegistry
from cfpo.run_spec import RunSpec
from services.rollout.settings import RolloutSettings
from services.rollout.worker import RolloutWorker

log = logging.getLogger("cfpo.rollout")


parse_settings = Entrypoint(
    RolloutSettings,
    prog="cfpo serve rollout",
    description="Generate, score and queue groups while staleness admission control allows.",
).parse


def main(argv: list[str]) -> None:
    settings = parse_settings(argv)
    log_to_stderr()
    recorder = PrometheusRecorder(ROLLOUT_METRICS)
    if settings.metrics_port:
        recorder.serve(settings.metrics_port, settings.metrics_host)
    clients = (GenerationPool(settings.generation_urls), RewardClient(settings.reward_url))
    stopping = threading.Event()
    if settings.worker:
        _serve_running_runs(settings.redis_url, clients, recorder, stopping, settings.metrics_retention_s)
        return
    assert settings.spec is not None and settings.run_id is not None  # the settings' own rule
    made = _serve(
        load_or_exit(RunSpec, settings.spec), settings.run_id, settings.redis_url, clients, recorder, stopping
    )
    log.info("done: %d groups", made)


def _serve(
    spec: RunSpec,
    run_id: str,
    redis_url: str,
    clients: tuple[GenerationPool, RewardClient],
    recorder: PrometheusRecorder,
    stopping: threading.Event,
    still_wanted=lambda: True,
) -> int:
    with RolloutQueue(run_id, QueueSettings(redis_url=redis_url, max_depth=spec.queue_capacity)) as queue:
        worker = RolloutWorker(spec, run_id, queue, *clients, recorder, still_wanted=still_wanted)

        def stop(*_: object) -> None:
            stopping.set()
            worker.stop.set()

        # SIGTERM ends this run's work and the process; a run that ends elsewhere ends only the former.
        signal.signal(signal.SIGTERM, stop)
        return worker.run()


def _serve_running_runs(
    redis_url: str,
    clients: tuple[GenerationPool, RewardClient],
    recorder: PrometheusRecorder,
    stopping: threading.Event,
    metrics_retention_s: float,
    poll_seconds: float = 1.0,
) -> None:
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
            forget_run_later(recorder, run.id, metrics_retention_s)  # this worker is done with it


if __name__ == "__main__":
    main(sys.argv[1:])
