"""Checkpoint retention on a real folder: the newest K stay, so do the ``latest`` one and marked ones; the room a
checkpoint needs is measured on the real disk."""

import os
import shutil
import time

from trainer.checkpoints import (
    KEEP_MARKER,
    checkpoint_bytes,
    checkpoint_tags,
    latest_tag,
    point_latest,
    prune_checkpoints,
    wait_for_room,
)


def _checkpoints(directory, versions, latest):
    for version in versions:
        (directory / f"version-{version}").mkdir(parents=True)
        (directory / f"version-{version}" / "model.pt").write_bytes(b"weights")
    (directory / "latest").write_text(f"version-{latest}")


def _left(directory):
    return sorted(int(p.name.removeprefix("version-")) for p in directory.iterdir() if p.is_dir())


def test_the_newest_k_stay_and_the_rest_go(tmp_path):
    _checkpoints(tmp_path, [5, 10, 15, 20, 25], latest=25)
    removed = prune_checkpoints(tmp_path, keep=2)
    assert _left(tmp_path) == [20, 25] and sorted(p.name for p in removed) == ["version-10", "version-15", "version-5"]


def test_marked_and_latest_checkpoints_stay(tmp_path):
    _checkpoints(tmp_path, [5, 10, 15, 20], latest=15)  # a checkpoint newer than latest is being written
    (tmp_path / "version-5" / KEEP_MARKER).touch()
    prune_checkpoints(tmp_path, keep=1)
    assert _left(tmp_path) == [5, 15, 20]


def test_nothing_goes_before_a_checkpoint_is_complete(tmp_path):
    for version in (5, 10, 15):
        (tmp_path / f"version-{version}").mkdir()
    assert prune_checkpoints(tmp_path, keep=1) == [] and _left(tmp_path) == [5, 10, 15]


def test_a_checkpoint_takes_the_size_of_the_latest(tmp_path):
    assert checkpoint_bytes(tmp_path) is None  # before the first
    _checkpoints(tmp_path, [5, 10], latest=5)
    (tmp_path / "version-5" / "optimizer.pt").write_bytes(b"x" * 1000)
    assert checkpoint_bytes(tmp_path) == len(b"weights") + 1000


def test_waiting_for_room_ends_with_the_figures_when_none_comes(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    assert wait_for_room(tmp_path, free // 2, timeout=0) is None
    started = time.monotonic()
    problem = wait_for_room(tmp_path, free * 4, timeout=0.5, poll=0.1)
    assert time.monotonic() - started >= 0.5
    assert problem is not None and f"needs about {free * 4 / 2**20:.1f} MiB" in problem and "resume the run" in problem


def test_tags_of_claims_order_by_version_and_latest_moves_by_rename(tmp_path):
    for written, tag in enumerate(("version-4-1-aa", "version-8-1-aa", "version-8-2-bb", "version-12-2-bb")):
        (tmp_path / tag).mkdir()
        os.utime(tmp_path / tag, (written, written))  # one version twice: the later claim's is newer
    point_latest(tmp_path, "version-8-2-bb")
    assert latest_tag(tmp_path) == "version-8-2-bb" and not (tmp_path / "latest.partial").exists()
    assert [p.name for p in checkpoint_tags(tmp_path)][0] == "version-4-1-aa"
    removed = prune_checkpoints(tmp_path, keep=1)
    # Older than latest and beyond the newest one: gone. The newer one (being written, or a stale claim's) stays.
    assert sorted(p.name for p in removed) == ["version-4-1-aa", "version-8-1-aa"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["version-12-2-bb", "version-8-2-bb"]
