"""``cfpo serve rollout --spec SPEC.yaml --run-id ID``: a rollout worker for one run, until it has all its groups."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import typer

from cfpo.config import ConfigError, load_config
from cfpo.generation_client import GenerationClient
from cfpo.metrics import ROLLOUT_METRICS, PrometheusRecorder
from cfpo.queue import QueueSettings, RolloutQueue
from cfpo.reward_client import RewardClient
from cfpo.run_spec import RunSpec
from services.rollout.worker import RolloutWorker


def main(
    spec: Path = typer.Option(..., help="run spec (YAML)"),
    run_id: str = typer.Option(..., help="the run's id (its Redis keys are run:<id>:...)"),
    generation_url: str = typer.Option("http://127.0.0.1:8000", envvar="CFPO_GENERATION_URL"),
    reward_url: str = typer.Option("http://127.0.0.1:8011", envvar="CFPO_REWARD_URL"),
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0", envvar="REDIS_URL"),
    metrics_port: int = typer.Option(0, help="serve /metrics on this port (0: off)"),
) -> None:
    """Generate, score and queue groups for one run while staleness admission control allows."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        run_spec = load_config(RunSpec, spec)
    except ConfigError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    recorder = PrometheusRecorder(ROLLOUT_METRICS)
    if metrics_port:
        recorder.serve(metrics_port)
    with RolloutQueue(run_id, QueueSettings(redis_url=redis_url, max_depth=run_spec.queue_capacity)) as queue:
        worker = RolloutWorker(run_spec, run_id, queue, GenerationClient(generation_url),
                               RewardClient(reward_url), recorder)
        signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
        made = worker.run()
    logging.getLogger("cfpo.rollout").info("done: %d groups", made)


if __name__ == "__main__":
    typer.run(main)
