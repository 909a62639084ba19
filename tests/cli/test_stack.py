"""The embedded stack's logs and its stop, on cheap services (a few lines of Python each, no vLLM): each service's log
rotates at its cap, and no service outlives the stack, whether it is stopped by SIGHUP, by its terminal closing, or
by a second Ctrl-C while a service is slow to stop."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from cfpo.cli.service_logs import RotatingLog
from cfpo.cli.stack import Service, Stack, StackError, StackSettings
from tests import REPO_ROOT
from tests.servers import interruptible, stack_port_offset

# A service: starts a grandchild in its group (as vLLM starts its engine), writes both pids, then waits to be
# stopped. "stubborn": it and its grandchild ignore SIGTERM (a service slow to stop, at worst).
SERVICE = r"""
import os, signal, subprocess, sys, time
pids, mode = sys.argv[1:]
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the grandchild through exec
grandchild = subprocess.Popen(["sleep", "600"])
if mode == "stubborn":
    signal.signal(signal.SIGTERM, lambda *_: print("SIGTERM ignored", flush=True))
with open(pids + ".tmp", "w") as out:
    out.write(f"{os.getpid()} {grandchild.pid}")
os.replace(pids + ".tmp", pids)
print("up", flush=True)
while True:
    time.sleep(1)
"""

# ``cfpo up`` past its options, serving two such services.
SERVE = r"""
import sys
from pathlib import Path
from cfpo.cli.stack import Service, Stack, StackSettings
from cfpo.cli.up import serve
state, mode, offset, service = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
settings = StackSettings(
    model=state / "model", state_dir=state, redis_url="redis://127.0.0.1:1/0", prometheus=False,
    **StackSettings.offset_ports(offset),
)
stack = Stack(settings)
stack.services = [
    Service(name, [sys.executable, "-c", service, str(state / f"{name}.pids"), mode], (state / f"{name}.pids").exists)
    for name in ("first", "second")
]
sys.exit(serve(stack))
"""


def _serve(state: Path, mode: str, preexec_fn=None, **popen) -> subprocess.Popen:
    """``cfpo up`` of two cheap services, with the terminal's signal actions whatever this run inherited, then
    ``preexec_fn``."""
    env = {**os.environ, "COLUMNS": "200"}  # the last line of the URLs unwrapped, on a terminal too
    argv = [sys.executable, "-c", SERVE, str(state), mode, str(stack_port_offset()), SERVICE]

    def start() -> None:
        interruptible()
        if preexec_fn is not None:
            preexec_fn()

    return subprocess.Popen(argv, cwd=REPO_ROOT, env=env, start_new_session=True, preexec_fn=start, **popen)


def _service_pids(state: Path) -> list[int]:
    return [int(pid) for name in ("first", "second") for pid in (state / f"{name}.pids").read_text().split()]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (exited, its parent has not reaped it yet) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_until_up(up: subprocess.Popen, output: Path, state: Path) -> list[int]:
    deadline = time.monotonic() + 60
    while "Ctrl-C stops everything" not in output.read_text():
        assert up.poll() is None, output.read_text()
        assert time.monotonic() < deadline, output.read_text()
        time.sleep(0.2)
    return _service_pids(state)


def _assert_all_gone(pids: list[int]) -> None:
    assert not [pid for pid in pids if _alive(pid)], "outlived the stack"


@pytest.fixture
def state(tmp_path):
    """The stack's state folder; afterwards, what a failed test left running of its services is killed (each
    process checked by its command line: a pid may be another's by then)."""
    state = tmp_path / "state"
    state.mkdir()
    yield state
    for pids in state.glob("*.pids"):
        child, grandchild = (int(pid) for pid in pids.read_text().split())
        for pid, mark in ((child, str(pids).encode()), (grandchild, b"sleep\x00600")):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                if _alive(pid) and mark in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def output(state):
    return state.parent / "up.log"


def test_sighup_stops_every_service_and_what_they_started(output, state):
    with output.open("w") as log:
        up = _serve(state, "plain", stdout=log, stderr=subprocess.STDOUT)
    try:
        pids = _wait_until_up(up, output, state)
        up.send_signal(signal.SIGHUP)
        assert up.wait(30) == 0, output.read_text()
    finally:
        up.kill()
    assert "stopped" in output.read_text()
    _assert_all_gone(pids)


def _take_terminal() -> None:
    """A ``preexec_fn``: make stdin, a pty, the new session's controlling terminal, as a terminal window's shell."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_closing_its_terminal_stops_every_service(state):
    """The kernel sends SIGHUP when the terminal closes, and from then on writing to it fails (EIO): the stop's
    status line must neither cut the stop short nor end it in a traceback."""
    terminal, child_end = os.openpty()
    up = _serve(state, "plain", stdin=child_end, stdout=child_end, stderr=child_end, preexec_fn=_take_terminal)
    os.close(child_end)
    try:
        shown, deadline = b"", time.monotonic() + 60
        while b"Ctrl-C stops everything" not in shown:
            assert up.poll() is None and time.monotonic() < deadline, shown.decode(errors="replace")
            if select.select([terminal], [], [], 0.5)[0]:
                shown += os.read(terminal, 1 << 16)
        pids = _service_pids(state)
        os.close(terminal)
        assert up.wait(30) == 0
    finally:
        up.kill()
    _assert_all_gone(pids)


def test_sighup_ignored_as_under_nohup_leaves_the_stack_up(output, state):
    def ignore_hangups() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    with output.open("w") as log:
        up = _serve(state, "plain", stdout=log, stderr=subprocess.STDOUT, preexec_fn=ignore_hangups)
    try:
        pids = _wait_until_up(up, output, state)
        up.send_signal(signal.SIGHUP)
        time.sleep(2)  # two turns of the watch loop
        assert up.poll() is None and all(_alive(pid) for pid in pids), output.read_text()
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0, output.read_text()
    finally:
        up.kill()
    _assert_all_gone(pids)


def test_a_second_ctrl_c_kills_the_services_still_stopping(output, state):
    with output.open("w") as log:
        up = _serve(state, "stubborn", stdout=log, stderr=subprocess.STDOUT)
    try:
        pids = _wait_until_up(up, output, state)
        up.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        while "SIGTERM ignored" not in (state / "logs/second.log").read_text():  # the last started, stopped first
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.2)
        interrupted = time.monotonic()
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0, output.read_text()
        assert time.monotonic() - interrupted < 10, "waited out the stop's grace (30 s) instead"
    finally:
        up.kill()
    assert "SIGINT while stopping: killing every service left (SIGKILL)" in output.read_text()
    _assert_all_gone(pids)


def _line(index: int) -> str:
    return f"line {index:06d} " + "x" * 40


LINES = 40_000  # 2 MB, 40 caps of 0.05 MiB
CHATTY = f"import sys\nfor i in range({LINES}):\n    print(f'line {{i:06d}} ' + 'x' * 40)\nsys.exit(3)"


@pytest.mark.parametrize("backups", [0, 2])
def test_a_fast_printers_log_rotates_at_its_cap_and_its_tail_says_why_it_failed(tmp_path, backups):
    cap_mib = 0.05
    settings = StackSettings(
        model=tmp_path / "model",
        state_dir=tmp_path,
        redis_url="redis://127.0.0.1:1/0",
        prometheus=False,
        log_max_mib=cap_mib,
        log_backups=backups,
        **StackSettings.offset_ports(stack_port_offset()),
    )
    stack = Stack(settings)
    stack.services = [Service("chatty", [sys.executable, "-c", CHATTY], lambda: False)]
    with pytest.raises(StackError, match="chatty exited with 3") as failed:
        stack.start()
    assert str(failed.value).endswith(_line(LINES - 1) + "\n")
    copier = stack.services[0].copier
    assert copier is not None and not copier.is_alive()

    logs = tmp_path / "logs"
    names = ["chatty.log", *(f"chatty.log.{index}" for index in range(1, backups + 1))]
    assert sorted(path.name for path in logs.iterdir()) == names
    cap, line = round(cap_mib * 2**20), len(_line(0)) + 1
    for name in names:
        data = (logs / name).read_bytes()
        assert len(data) <= cap and data.endswith(b"\n"), name  # cut at a line's end
        assert name == "chatty.log" or len(data) > cap - line, name  # after the last whole line that fits
    kept = b"".join((logs / name).read_bytes() for name in reversed(names)).decode().splitlines()
    assert kept == [_line(index) for index in range(LINES - len(kept), LINES)]  # the newest, in order, none lost


def test_a_line_longer_than_the_cap_is_split_and_a_bigger_old_log_rotated_first(tmp_path):
    path = tmp_path / "service.log"
    path.write_bytes(b"an older run's log, already past the cap\n" * 4)
    log = RotatingLog(path, max_bytes=100, backups=3)
    log.write(b"y" * 250)
    log.close()
    assert [rotated.read_bytes() for rotated in (path.with_name(f"service.log.{i}") for i in (3, 2, 1))] == [
        b"an older run's log, already past the cap\n" * 4,
        b"y" * 100,
        b"y" * 100,
    ]
    assert path.read_bytes() == b"y" * 50
