"""``cfpo serve learner --spec SPEC.yaml --run-id ID --run-dir DIR [--resume]``: the DeepSpeed learner for one run."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from cfpo.config import ConfigError, load_config
from cfpo.generation_client import GenerationClient
from cfpo.metrics import LEARNER_METRICS, PrometheusRecorder
from cfpo.queue import QueueSettings, RolloutQueue
from cfpo.run_spec import RunSpec


def main(
    spec: Path = typer.Option(..., help="run spec (YAML)"),
    run_id: str = typer.Option(..., help="the run's id (its Redis keys are run:<id>:...)"),
    run_dir: Path = typer.Option(..., help="metrics, checkpoints and weights of the run go here"),
    resume: bool = typer.Option(False, help="continue from the run directory's latest checkpoint"),
    generation_url: str = typer.Option("http://127.0.0.1:8000", envvar="CFPO_GENERATION_URL"),
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0", envvar="REDIS_URL"),
    metrics_port: int = typer.Option(0, help="serve /metrics on this port (0: off)"),
    data_timeout: float = typer.Option(600.0, help="seconds to wait for a step's rollouts before failing"),
) -> None:
    """Train on the run's rollout stream until the run's steps are done."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        run_spec = load_config(RunSpec, spec)
    except ConfigError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    from trainer.service import LearnerService

    recorder = PrometheusRecorder(LEARNER_METRICS)
    if metrics_port:
        recorder.serve(metrics_port)
    queue_settings = QueueSettings(redis_url=redis_url, max_depth=run_spec.queue_capacity)
    with RolloutQueue(run_id, queue_settings) as queue:
        service = LearnerService(run_spec, run_id, run_dir, queue, GenerationClient(generation_url), recorder,
                                 data_timeout=data_timeout)
        service.run(resume=resume)


if __name__ == "__main__":
    typer.run(main)
