"""Checkpoint retention on a real folder: the newest K stay, so do the ``latest`` one and marked ones."""

from trainer.checkpoints import KEEP_MARKER, prune_checkpoints


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
