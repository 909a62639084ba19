"""Checkpoints kept on disk: the newest ``keep`` of a run, plus any a user marked to keep.

A SmolLM2-135M checkpoint (weights, optimizer state) is about 1.6 GB; a 200-step run checkpointing every 5 steps
would write 64 GB, more than the chart's volume. Older checkpoints are deleted only after the newest is complete.

Each tag is its claim's own (``version-<v>-<claim>``): a learner that lost its claim, or a second save of one
version, never writes into a checkpoint another one names. ``latest`` is moved (atomically, by rename) only once
the new checkpoint is complete, and only by the claim's holder (``trainer.run_plane`` checks the claim right before).
A checkpoint with a file named ``keep`` in it is never deleted (``touch runs/<run>/checkpoints/version-40-…/keep``).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger("cfpo.learner")
KEEP_MARKER = "keep"
TAG_PREFIX = "version-"


class NoRoomForCheckpoint(OSError):
    """The disk has no room for the next checkpoint, and none came while the learner waited."""


def checkpoint_tag(version: int, claim: str) -> str:
    return f"{TAG_PREFIX}{version}-{claim}"


def _version(tag: str) -> int | None:
    """The policy version a tag names (``version-<v>`` of older runs, or ``version-<v>-<claim>``)."""
    number = tag.removeprefix(TAG_PREFIX).partition("-")[0]
    return int(number) if tag.startswith(TAG_PREFIX) and number.isdigit() else None


def checkpoint_tags(directory: Path) -> list[Path]:
    """The run's checkpoint folders, oldest first."""
    tags = [p for p in directory.glob(f"{TAG_PREFIX}*") if p.is_dir() and _version(p.name) is not None]
    return sorted(tags, key=lambda p: (_version(p.name) or 0, p.stat().st_mtime))


def latest_tag(directory: Path) -> str | None:
    """The tag of the newest complete checkpoint; None before the first."""
    latest_file = directory / "latest"
    return latest_file.read_text().strip() if latest_file.exists() else None


def point_latest(directory: Path, tag: str) -> None:
    """Name ``tag`` (complete) the one to resume from, in one rename: a reader sees the old name or the new one."""
    partial = directory / "latest.partial"
    partial.write_text(tag)
    os.replace(partial, directory / "latest")


def prune_checkpoints(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints older than the ``latest`` one (it stays, and so do marked
    ones and any newer one: it may be being written); returns those deleted."""
    if (latest := latest_tag(directory)) is None:
        return []  # no complete checkpoint yet: nothing may go
    tags = checkpoint_tags(directory)
    older = tags[: tags.index(directory / latest)] if directory / latest in tags else []
    kept = set(tags[-keep:])
    removed = [tag for tag in older if tag not in kept and not (tag / KEEP_MARKER).exists()]
    for tag in removed:
        shutil.rmtree(tag)
    if removed:
        log.info("deleted %d old checkpoint(s): %s", len(removed), ", ".join(t.name for t in removed))
    return removed


def checkpoint_bytes(directory: Path) -> int | None:
    """The size of the newest complete checkpoint (the one ``latest`` names); None before the first."""
    if (latest := latest_tag(directory)) is None:
        return None
    tag = directory / latest
    return sum(f.stat().st_size for f in tag.rglob("*") if f.is_file())


def wait_for_room(directory: Path, needed: int, timeout: float, poll: float = 2.0) -> str | None:
    """Wait until ``directory``'s filesystem has ``needed`` bytes free, up to ``timeout`` seconds; None once it
    has, else why not. A checkpoint must not start on a disk it would fill: it would fail half-written, and older
    ones are kept until a newer one is complete, so none could make room."""
    directory.mkdir(parents=True, exist_ok=True)
    deadline, warned = time.monotonic() + timeout, -math.inf
    while (free := shutil.disk_usage(directory).free) < needed:
        if time.monotonic() >= deadline:
            return (
                f"no room for a checkpoint in {directory}: it needs about {needed / 2**20:.1f} MiB and "
                f"{free / 2**20:.1f} MiB are free after {timeout:.0f} s of waiting; free some space (or lower "
                "keep_checkpoints) and resume the run"
            )
        if time.monotonic() - warned >= 60:
            warned = time.monotonic()
            log.warning(
                "checkpoint waits for room in %s: about %.1f MiB needed, %.1f MiB free (up to %.0f s more)",
                directory,
                needed / 2**20,
                free / 2**20,
                deadline - time.monotonic(),
            )
        time.sleep(poll)
    return None
