"""One learner step alone: ``Learner.train_on`` (DeepSpeed, the run's loss) on one rollout step's samples, with
no stream, no weight push and nothing else running. Started by the benchmarks in a process of its own, so that
its cores and threads are the ones it is measured with."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import Field

from benchmarks.child import child_main
from cfpo.config import StrictModel
from cfpo.run_spec import RunSpec
from cfpo.sample import Sample


class LearnerStepConfig(StrictModel):
    spec: RunSpec
    samples: Path = Field(description="JSON lines, one Sample each: exactly one step's batch")
    repeats: int = Field(ge=1)


def measure(config: LearnerStepConfig) -> dict:
    import torch

    from trainer.learner import Learner

    samples = [Sample.model_validate_json(line) for line in config.samples.read_text().splitlines()]
    learner = Learner(config.spec.model, config.spec.learner)
    learner.train_on(samples)  # untimed: first-step allocations
    seconds = []
    for _ in range(config.repeats):
        started = time.perf_counter()
        learner.train_on(samples)
        seconds.append(time.perf_counter() - started)
    return {"seconds": seconds, "threads": torch.get_num_threads(), "cores": sorted(os.sched_getaffinity(0))}


if __name__ == "__main__":
    child_main(LearnerStepConfig, measure)
