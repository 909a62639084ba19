"""A service's output in its log file, rotated at a size: the embedded stack's services run for days, and a log
that grows without bound fills the disk. A child's own file could not be rotated (it would write on into the renamed
one), so the stack reads its output from a pipe and a thread copies it here."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import IO


class RotatingLog:
    """A service's log, capped at ``max_bytes``: when the next write would pass it, the file becomes
    ``<name>.log.1`` (older ones move up to ``.<backups>``, the oldest is dropped) and a new one starts, cut after
    the last whole line that fits. Bytes, not text: a child's output is copied as it wrote it."""

    def __init__(self, path: Path, max_bytes: int, backups: int):
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._file = path.open("ab")
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        while len(data) > (room := max(0, self.max_bytes - self._size)):
            cut = data.rfind(b"\n", 0, room) + 1
            if cut == 0 and self._size == 0:
                cut = room  # a line longer than a whole file: split it
            self._file.write(data[:cut])
            data = data[cut:]
            self._rotate()
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def _rotate(self) -> None:
        self._file.close()
        if self.backups:
            for index in range(self.backups - 1, 0, -1):
                if rotated(self.path, index).exists():
                    rotated(self.path, index).replace(rotated(self.path, index + 1))
            self.path.replace(rotated(self.path, 1))
        self._file = self.path.open("wb")
        self._size = 0

    def close(self) -> None:
        self._file.close()


def rotated(path: Path, index: int) -> Path:
    """The ``index``-th newest rotated file of the log at ``path``: ``<name>.log.<index>``."""
    return path.with_name(f"{path.name}.{index}")


def copy_output(source: IO[bytes], log: RotatingLog) -> None:
    """Copy a child's output into its log until no process holds the pipe's other end (the child and what it
    started have exited). When the log cannot be written (a full disk) the rest is read and dropped: a pipe that
    nobody reads would block the service at its next line."""
    writable = True
    with source, contextlib.closing(log):
        while chunk := source.read(1 << 16):
            if writable:
                try:
                    log.write(chunk)
                except OSError as error:
                    writable = False
                    with contextlib.suppress(OSError):
                        print(f"cannot write {log.path} ({error}); dropping the rest of its output", file=sys.stderr)
