"""``cfpo serve rollout`` = ``python -m services.rollout``: a rollout worker, from its settings.

``--spec SPEC.yaml --run-id ID`` serves one run started by hand until it has all its groups; ``--worker`` serves
whichever runs the control API's registry shows running, one after another, until stopped. A worker whose work on
a run fails (generation or reward down past its retries, a full queue, Redis gone) hands its slots back and tries
that run again after ``run_retry_s``, instead of exiting.
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
        _serve_running_runs(settings, clients, recorder, stopping)
        return
    assert settings.spec is not None and settings.run_id is not None  # the settings' own rule
    made, _ = _serve(load_or_exit(RunSpec, settings.spec), settings.run_id, settings, clients, recorder, stopping)
    log.info("done: %d groups", made)


def _serve(
    spec: RunSpec,
    run_id: str,
    settings: RolloutSettings,
    clients: tuple[GenerationPool, RewardClient],
    recorder: PrometheusRecorder,
    stopping: threading.Event,
    still_wanted=lambda: True,
) -> tuple[int, bool]:
    """Work on the run until it has all its groups, it is no longer wanted or SIGTERM came; returns the groups this
    worker made and whether every slot of the run is filled."""
    queue_settings = QueueSettings(
        redis_url=settings.redis_url, max_depth=spec.queue_capacity, slot_lease_s=settings.slot_lease_s
    )
    with RolloutQueue(run_id, queue_settings) as queue:
        worker = RolloutWorker(spec, run_id, queue, *clients, recorder, still_wanted=still_wanted)

        def stop(*_: object) -> None:
            stopping.set()
            worker.stop.set()

        # SIGTERM ends this run's work and the process; a run that ends elsewhere ends only the former.
        signal.signal(signal.SIGTERM, stop)
        made = worker.run()
        return made, queue.unfilled_slots(worker.total_slots) == 0


def _serve_running_runs(
    settings: RolloutSettings,
    clients: tuple[GenerationPool, RewardClient],
    recorder: PrometheusRecorder,
    stopping: threading.Event,
    poll_seconds: float = 1.0,
) -> None:
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    # Runs whose slots this worker saw all filled. One it left unfilled (it was requeued while its learner restarts,
    # or this worker stopped) is served again when it runs again.
    finished: set[str] = set()
    with RunRegistry(settings.redis_url) as registry:
        log.info("rollout worker waiting for running runs")
        while not stopping.is_set():
            # A stored spec that no longer validates is shown by the API; the learner's claim fails its run.
            runs = [(r, r.spec) for r in registry.running() if r.id not in finished and r.spec]
            if not runs:
                stopping.wait(poll_seconds)
                continue
            run, spec = min(runs, key=lambda pair: pair[0].created_at)

            def still_running(run_id: str = run.id) -> bool:
                try:
                    return registry.get(run_id).state == "running"
                except RunNotFound:
                    return False

            try:
                made, complete = _serve(spec, run.id, settings, clients, recorder, stopping, still_wanted=still_running)
            except Exception:  # one run's failure must not end the worker: the run may recover, others may come
                log.exception(
                    "run %s: work failed; its slots are handed back, trying again in %.0f s",
                    run.id,
                    settings.run_retry_s,
                )
                stopping.wait(settings.run_retry_s)
                continue
            log.info("run %s: %d groups from this worker%s", run.id, made, "" if complete else "; slots left")
            if complete:
                finished.add(run.id)
                forget_run_later(recorder, run.id, settings.metrics_retention_s)  # this worker is done with it


if __name__ == "__main__":
    main(sys.argv[1:])
