"""Checkpoints kept on disk: the newest ``keep`` of a run, plus any a user marked to keep.

A SmolLM2-135M checkpoint (weights, optimizer state) is about 1.6 GB; a 200-step run checkpointing every 5 steps
would write 64 GB, more than the chart's volume. Older checkpoints are deleted only after the newest is complete:
DeepSpeed writes its ``latest`` file last. A checkpoint with a file named ``keep`` in it is never deleted
(``touch runs/<run>/checkpoints/version-40/keep``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger("cfpo.learner")
KEEP_MARKER = "keep"
TAG_PREFIX = "version-"


def checkpoint_tags(directory: Path) -> list[Path]:
    """The run's checkpoint folders, oldest first."""
    tags = [p for p in directory.glob(f"{TAG_PREFIX}*") if p.is_dir() and p.name[len(TAG_PREFIX) :].isdigit()]
    return sorted(tags, key=lambda p: int(p.name[len(TAG_PREFIX) :]))


def prune_checkpoints(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (and the ``latest`` one, and marked ones); returns those
    deleted."""
    latest_file = directory / "latest"
    if not latest_file.exists():
        return []  # no complete checkpoint yet: nothing may go
    latest = directory / latest_file.read_text().strip()
    tags = checkpoint_tags(directory)
    kept = {*tags[-keep:], latest}
    removed = [tag for tag in tags if tag not in kept and not (tag / KEEP_MARKER).exists()]
    for tag in removed:
        shutil.rmtree(tag)
    if removed:
        log.info("deleted %d old checkpoint(s): %s", len(removed), ", ".join(t.name for t in removed))
    return removed
