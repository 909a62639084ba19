"""A worker's Prometheus recorder forgets an ended run's series, and only that run's."""

import asyncio
import time

from cfpo.metrics import (
    LEARNER_METRICS,
    LEARNER_STEPS,
    LEARNER_WEIGHT_SYNC_SECONDS,
    PrometheusRecorder,
    forget_run_later,
)


def _exported(recorder: PrometheusRecorder) -> str:
    return asyncio.run(recorder.exposition()).decode()


def _record_two_runs() -> PrometheusRecorder:
    recorder = PrometheusRecorder(LEARNER_METRICS)
    for run in ("ended", "training"):
        recorder.inc(LEARNER_STEPS, 1.0, run=run, loss="cfpo")
        recorder.observe(LEARNER_WEIGHT_SYNC_SECONDS, 0.1, run=run)
    return recorder


def test_forgetting_a_run_removes_its_series_and_keeps_the_others():
    recorder = _record_two_runs()
    assert recorder.forget_run("ended") == 2
    exported = _exported(recorder)
    assert 'run="ended"' not in exported
    assert 'cfpo_learner_optimizer_steps_total{loss="cfpo",run="training"} 1.0' in exported
    assert recorder.forget_run("ended") == 0  # nothing left to remove


def test_forgetting_later_waits_for_the_last_scrapes():
    recorder = _record_two_runs()
    forget_run_later(recorder, "ended", after_s=0.3)
    assert 'run="ended"' in _exported(recorder)
    time.sleep(0.6)
    assert 'run="ended"' not in _exported(recorder) and 'run="training"' in _exported(recorder)
