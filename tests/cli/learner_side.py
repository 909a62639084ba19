"""The learner's side of a run, for tests of the commands that follow one: claim it, record its steps, end it."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from cfpo.registry import RunRegistry

KL, CLIP = 0.0125, 0.25


def metrics(step: int) -> dict[str, float]:
    """What ``train`` records at ``step`` (0-based): reward 0.1, 0.2, ... and a steady KL and clip fraction."""
    return {"reward_mean": (step + 1) / 10, "behaviour_kl_k3": KL, "behaviour_clip_frac": CLIP}


def train(
    registry: RunRegistry, worker: str, steps: int, seconds: float, runs_dir: Path | None = None, timeout: float = 60
) -> str:
    """Claim the next queued run (waiting for one), record ``steps`` steps ``seconds`` apart (and write them to its
    ``metrics.jsonl`` under ``runs_dir``, as the learner does), and finish it as succeeded; returns its id."""
    deadline = time.monotonic() + timeout
    while (claim := registry.claim_next(worker)) is None:
        assert time.monotonic() < deadline, "no run was queued"
        time.sleep(0.1)
    run_dir = None if runs_dir is None else runs_dir / claim.run_id
    if run_dir is not None:
        run_dir.mkdir(parents=True)
    for step in range(steps):
        time.sleep(seconds)
        if run_dir is not None:
            with (run_dir / "metrics.jsonl").open("a") as rows:
                rows.write(json.dumps({"step": step, **metrics(step)}) + "\n")
        registry.record_step(claim.run_id, claim.lease, step, step + 1, metrics(step))
    registry.finish(claim.run_id, claim.lease, "succeeded")
    return claim.run_id


def step_line(label: str, step: int, steps: int) -> str:
    """A pattern of the plain progress line of step ``step`` (1-based) as ``train`` records it."""
    shown = f"{label} step {step}/{steps}  reward {step / 10:g}  KL vs behaviour {KL:g}  clip vs behaviour {CLIP:g}  "
    return re.escape(shown) + r"\d+\.\d s/step  \d+ s left"
