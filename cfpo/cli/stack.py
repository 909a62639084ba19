"""The embedded stack behind ``cfpo up`` and the demo: every service as a local process, on loopback.

Redis (unless ``REDIS_URL`` points at one), vLLM generation, reward, control API, a learner worker, a rollout
worker, and Prometheus when its binary is installed. Each runs in its own process group, its output copied by a
thread of the stack into ``<state>/logs/<name>.log``, rotated at a size; the stack starts them in dependency order,
waits for each to be healthy, and stops them in reverse order. Services are started with ``python -m``, so this
module imports none of them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Literal

import httpx
from pydantic import Field

from cfpo.cli.service_logs import RotatingLog, copy_output, rotated
from cfpo.config import StrictModel


class StackError(RuntimeError):
    """A service did not come up, or died; the message names it and ends with its log's tail."""


class StackSettings(StrictModel):
    model: Path = Field(description="local Hugging Face model directory generation serves and runs train")
    state_dir: Path = Field(Path("runs/stack"), description="logs, Redis data and Prometheus data")
    runs_dir: Path = Field(Path("runs"), description="each run's metrics, checkpoints and weights")
    redis_url: str | None = Field(None, description="an existing Redis; default: start redis-server here")
    redis_port: int = 6379
    generation_port: int = 8000
    reward_port: int = 8011
    control_port: int = 8080
    learner_metrics_port: int = 9101
    rollout_metrics_port: int = 9102
    prometheus_port: int = 9090
    prometheus: bool = Field(True, description="start Prometheus when its binary is installed")
    scrape_interval_s: int = Field(5, ge=1, description="Prometheus' scrape interval, seconds")
    generation_cpu_cores: Literal["all", "vllm"] = Field(
        "all", description="CPU: vLLM's worker binds every core (all) or follows vLLM's own binding (vllm)"
    )
    learner_threads: int | None = Field(
        None, ge=1, description="CPU threads of the learner; default every core (trainer/threads.py)"
    )
    weights_dir: Path | None = Field(
        None,
        description="where the learner stages weights for generation; default a folder in /dev/shm (memory, "
        "the cheapest push) when the machine has one, else each run's directory",
    )
    startup_timeout: float = Field(600.0, gt=0, description="seconds each service may take to become healthy")
    log_max_mib: float = Field(
        64.0, ge=0.01, description="size at which a service's <state>/logs/<name>.log is rotated, MiB"
    )
    log_backups: int = Field(
        3, ge=0, description="rotated logs kept per service, <name>.log.1 the newest; 0 keeps only the current one"
    )

    @classmethod
    def offset_ports(cls, offset: int) -> dict[str, int]:
        """Every default port moved by ``offset`` (so a second stack can run beside the first)."""
        return {name: f.default + offset for name, f in cls.model_fields.items() if name.endswith("_port")}


@dataclass
class Service:
    name: str
    argv: list[str]
    ready: Callable[[], bool]
    url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = field(default=None, repr=False)
    copier: threading.Thread | None = field(default=None, repr=False)  # its output into its log


def _http_ok(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return ready


def _memory_folder(name: str) -> Path | None:
    """A folder in /dev/shm (one per stack: the name carries a port), or None where there is no /dev/shm."""
    shared_memory = Path("/dev/shm")
    return shared_memory / name if shared_memory.is_dir() else None


def _python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class Stack:
    def __init__(self, settings: StackSettings):
        self.settings = settings
        self.logs = settings.state_dir / "logs"
        self.redis_url = settings.redis_url or f"redis://127.0.0.1:{settings.redis_port}/0"
        self.generation_url = f"http://127.0.0.1:{settings.generation_port}"
        self.reward_url = f"http://127.0.0.1:{settings.reward_port}"
        self.control_url = f"http://127.0.0.1:{settings.control_port}"
        self.weights_dir = settings.weights_dir or _memory_folder(f"cfpo-weights-{settings.learner_metrics_port}")
        self.services = self._services()

    def _services(self) -> list[Service]:
        s = self.settings
        services = []
        if s.redis_url is None:
            redis_dir = s.state_dir / "redis"
            services.append(
                Service(
                    "redis",
                    [
                        _binary("redis-server"),
                        "--bind",
                        "127.0.0.1",
                        "--port",
                        str(s.redis_port),
                        "--dir",
                        str(redis_dir),
                        "--appendonly",
                        "yes",
                        "--save",
                        "",
                    ],
                    self._redis_ready,
                    self.redis_url,
                )
            )
        services += [
            Service(
                "generation",
                _python(
                    "services.generation",
                    "--model",
                    str(s.model),
                    "--port",
                    str(s.generation_port),
                    "--cpu-cores",
                    s.generation_cpu_cores,
                ),
                _http_ok(f"{self.generation_url}/health"),
                self.generation_url,
            ),
            Service(
                "reward",
                _python("services.reward", "--port", str(s.reward_port)),
                _http_ok(f"{self.reward_url}/health"),
                self.reward_url,
            ),
            Service(
                "control",
                _python(
                    "services.control",
                    "--port",
                    str(s.control_port),
                    "--redis-url",
                    self.redis_url,
                    "--generation-url",
                    self.generation_url,
                ),
                _http_ok(f"{self.control_url}/health"),
                f"{self.control_url}/docs",
            ),
            Service(
                "learner",
                _python(
                    "trainer",
                    "--worker",
                    "--runs-dir",
                    str(s.runs_dir),
                    "--metrics-port",
                    str(s.learner_metrics_port),
                    "--generation-urls",
                    self.generation_url,
                    "--redis-url",
                    self.redis_url,
                    *(["--threads", str(s.learner_threads)] if s.learner_threads else []),
                    *(["--weights-dir", str(self.weights_dir)] if self.weights_dir else []),
                ),
                _http_ok(f"http://127.0.0.1:{s.learner_metrics_port}/metrics"),
                f"http://127.0.0.1:{s.learner_metrics_port}/metrics",
            ),
            Service(
                "rollout",
                _python(
                    "services.rollout",
                    "--worker",
                    "--metrics-port",
                    str(s.rollout_metrics_port),
                    "--generation-urls",
                    self.generation_url,
                    "--reward-url",
                    self.reward_url,
                    "--redis-url",
                    self.redis_url,
                ),
                _http_ok(f"http://127.0.0.1:{s.rollout_metrics_port}/metrics"),
                f"http://127.0.0.1:{s.rollout_metrics_port}/metrics",
            ),
        ]
        if s.prometheus and shutil.which("prometheus"):
            url = f"http://127.0.0.1:{s.prometheus_port}"
            services.append(
                Service(
                    "prometheus",
                    [
                        _binary("prometheus"),
                        f"--config.file={self._prometheus_config_path}",
                        f"--storage.tsdb.path={s.state_dir / 'prometheus'}",
                        f"--web.listen-address=127.0.0.1:{s.prometheus_port}",
                    ],
                    _http_ok(f"{url}/-/ready"),
                    url,
                )
            )
        return services

    def _redis_ready(self) -> bool:
        import redis

        try:
            with redis.Redis.from_url(self.redis_url, socket_connect_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    @property
    def _prometheus_config_path(self) -> Path:
        return self.settings.state_dir / "prometheus.yml"

    def _write_prometheus_config(self) -> None:
        s = self.settings
        targets = {
            "generation": s.generation_port,
            "reward": s.reward_port,
            "control": s.control_port,
            "learner": s.learner_metrics_port,
            "rollout": s.rollout_metrics_port,
        }
        jobs = "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            for job, port in targets.items()
        )
        rules = Path(__file__).resolve().parents[2] / "deploy/prometheus/rules.yml"
        quoted = str(rules).replace("'", "''")  # YAML single-quoted scalar
        rule_files = f"rule_files:\n  - '{quoted}'\n" if rules.is_file() else ""  # absent from an installed package
        self._prometheus_config_path.write_text(
            f"global:\n  scrape_interval: {s.scrape_interval_s}s\n{rule_files}scrape_configs:\n{jobs}"
        )

    def start(self, on_status: Callable[[str], None] = lambda message: None) -> None:
        """Start every service in order, each healthy before the next; on any failure stop what started."""
        self._check_ports_free()
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.settings.state_dir / "redis").mkdir(parents=True, exist_ok=True)
        self._write_prometheus_config()
        env = {
            **os.environ,
            "REDIS_URL": self.redis_url,
            "CFPO_GENERATION_URL": self.generation_url,
            "CFPO_REWARD_URL": self.reward_url,
        }
        try:
            for service in self.services:
                on_status(f"starting {service.name}")
                self._launch(service, env)
                self._wait_healthy(service)
        except BaseException:
            self.stop()
            raise

    def _launch(self, service: Service, env: dict[str, str]) -> None:
        """Start the service with its output on a pipe, and the thread that copies it into its rotating log (a
        child's own file could not be rotated: it would write on into the renamed one)."""
        log = RotatingLog(
            self.logs / f"{service.name}.log", round(self.settings.log_max_mib * 2**20), self.settings.log_backups
        )
        try:
            service.process = subprocess.Popen(
                service.argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                bufsize=0,  # a raw pipe: each read takes what is there, up to a chunk
                start_new_session=True,
                env={**env, **service.env},
            )
        except BaseException:
            log.close()
            raise
        assert service.process.stdout is not None, "stdout=PIPE"
        service.copier = threading.Thread(
            target=copy_output, args=(service.process.stdout, log), name=f"log-{service.name}", daemon=True
        )
        service.copier.start()

    def _check_ports_free(self) -> None:
        """A port already taken (often another stack) would answer the health checks in our services' place."""
        s = self.settings
        ports = {name: port for name, port in s.model_dump().items() if name.endswith("_port")}
        if s.redis_url is not None:
            ports.pop("redis_port")
        if not any(service.name == "prometheus" for service in self.services):
            ports.pop("prometheus_port")
        busy = []
        for name, port in ports.items():
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    busy.append(f"{name.removesuffix('_port')} {port}")
        if busy:
            raise StackError(f"ports in use: {', '.join(busy)}; is another stack running? (or use --port-offset)")

    def _wait_healthy(self, service: Service) -> None:
        assert service.process is not None, "called right after start() has started it"
        deadline = time.monotonic() + self.settings.startup_timeout
        while not service.ready():
            if exited(service.process):
                raise StackError(f"{service.name} exited with {service.process.returncode}\n{self.log_tail(service)}")
            if time.monotonic() > deadline:
                raise StackError(
                    f"{service.name} not healthy after {self.settings.startup_timeout:.0f} s\n{self.log_tail(service)}"
                )
            time.sleep(0.5)

    def check_alive(self) -> None:
        for service in self.services:
            if service.process is not None and exited(service.process):
                raise StackError(f"{service.name} died (exit {service.process.returncode})\n{self.log_tail(service)}")

    def log_tail(self, service: Service, chars: int = 3000) -> str:
        """The last ``chars`` bytes of the service's output, from ``<name>.log.1`` too when the current file has
        fewer (it was just rotated). Once the service has exited, its copier gets a moment to write the last lines
        (the ones saying why); it ends when no process of the group holds the pipe any more."""
        if service.copier is not None and service.process is not None and service.process.returncode is not None:
            service.copier.join(timeout=5)
        path = self.logs / f"{service.name}.log"
        tail = b""
        for file in (path, rotated(path, 1)):
            if len(tail) < chars and file.exists():
                with file.open("rb") as log:
                    log.seek(max(0, log.seek(0, os.SEEK_END) - (chars - len(tail))))
                    tail = log.read() + tail
        return f"--- {path} (tail) ---\n" + tail.decode(errors="replace")

    def stop(self, grace: float = 30.0) -> None:
        """Stop in reverse order: workers first (they finish their step), Redis last. Ctrl-C or SIGTERM meanwhile
        (the stop is often the first one's doing) SIGKILLs every group left instead of raising mid-stop and leaving
        them running; SIGHUP does not interrupt it. Whatever a step raises, every group is killed and reaped."""
        processes = [service.process for service in reversed(self.services) if service.process is not None]
        copiers = [service.copier for service in self.services if service.copier is not None]
        with _killing_on_interrupt(processes):
            try:
                for process in processes:
                    stop_process_group(process, grace)
            finally:
                for process in processes:
                    kill_process_group(process)
                deadline = time.monotonic() + 5  # a process that left its group may hold a pipe: not for ever
                for copier in copiers:
                    copier.join(max(0.0, deadline - time.monotonic()))
                if self.settings.weights_dir is None and self.weights_dir is not None:
                    shutil.rmtree(self.weights_dir, ignore_errors=True)  # a killed learner's staged weights hold memory


def exited(process: subprocess.Popen) -> bool:
    """Whether a process started in its own session has exited. The call that finds it so also SIGKILLs what its
    group left behind (vLLM's engine outliving its API server), while the group's number is still its own: once
    reaped, a leader's number may be given to another process, and a later signal could reach a stranger."""
    if process.returncode is not None:
        return True
    if process.poll() is None:
        return False
    _signal_group(process.pid, signal.SIGKILL)
    return True


def stop_process_group(process: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM a process started in its own session and all its children (vLLM has engine and worker
    processes), SIGKILL them if they outlive ``grace`` seconds, and whatever of the group outlives the leader."""
    if exited(process):
        return
    _signal_group(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace)
    kill_process_group(process)


def kill_process_group(process: subprocess.Popen) -> None:
    """SIGKILL a process started in its own session and all its children, and reap it."""
    if not exited(process):
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"{name} is not installed (scripts/setup.sh installs it; or pass REDIS_URL for Redis)")
    return path


def stop_on_signals() -> None:
    """Make SIGTERM, and SIGHUP (its terminal closed), behave as Ctrl-C, so a command that owns a stack stops it
    instead of orphaning it (the services, in their own sessions, see neither). A signal already ignored (``nohup``:
    to outlive the terminal) stays ignored."""
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _hang_up)


def _raise_keyboard_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _hang_up(*_: object) -> None:
    _leave_terminal()
    raise KeyboardInterrupt


def _leave_terminal(*_: object) -> None:
    """Point stdout and stderr at /dev/null where they are a terminal (after a hang-up one no longer says it is a
    tty, but is still a character device): writing to a closed terminal fails (EIO), and a status line or message
    failing must neither cut the stack's stop short nor end the command in a traceback."""
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            if stat.S_ISCHR(os.fstat(fd).st_mode):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)


@contextlib.contextmanager
def _killing_on_interrupt(processes: list[subprocess.Popen]) -> Iterator[None]:
    """While the stack stops: Ctrl-C or SIGTERM SIGKILLs every group not yet reaped (and says so), SIGHUP only
    leaves the terminal. Their usual handlers would raise in the middle of the stop and leave the rest running.
    Signal handlers are the main thread's; a signal ignored stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    told = False

    def kill_all(signum: int, _: FrameType | None) -> None:
        nonlocal told
        if not told:
            told = True
            with contextlib.suppress(OSError):
                print(
                    f"{signal.Signals(signum).name} while stopping: killing every service left (SIGKILL)",
                    file=sys.stderr,
                    flush=True,
                )
        for process in processes:
            if process.returncode is None:  # not reaped: its group's number is still its own
                _signal_group(process.pid, signal.SIGKILL)

    previous = {}
    for signum, handler in ((signal.SIGINT, kill_all), (signal.SIGTERM, kill_all), (signal.SIGHUP, _leave_terminal)):
        current = signal.getsignal(signum)
        if current is not None and current != signal.SIG_IGN:
            previous[signum] = current
            signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, former in previous.items():
            signal.signal(signum, former)
