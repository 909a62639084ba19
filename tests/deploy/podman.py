"""The compose stack on this machine's container engine: podman 4.3, driven by Debian's docker-compose 1.29 through
podman's Docker-compatible socket. What differs from Docker with Compose v2, each seen here, lives in this module,
not in the files users run:

- no registry is reachable, so the public images are replaced by local stand-ins (scripts/container-bases.sh);
- pip inside a build reads the machine's pip settings, mounted into the build (podman build --volume);
- podman without systemd schedules no health checks (its log says "unable to get systemd connection to add
  healthchecks"), so `HealthChecks` runs each container's check on its interval, as systemd's timer would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from tests import REPO_ROOT

CONTAINERS_CONF = REPO_ROOT / "deploy/podman/containers.conf"
TOOLS = ("podman", "docker-compose", "mmdebstrap")
PIP_SETTING = re.compile(r"^(?P<section>[^.]*)\.(?P<key>[\w-]+)='(?P<value>.*)'$")
PIP_PATH_KEYS = {"cert", "client-cert", "constraint", "find-links", "extra-index-url", "index-url"}


def unavailable() -> str | None:
    """Why the stack cannot run here, or None when it can."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (scripts/setup.sh installs them as root)"
    if os.geteuid() != 0:
        return "podman runs the stack as root on these machines (rootless needs subuid ranges)"
    return None


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr[-3000:]}")
    return result


def standin_images() -> dict[str, str]:
    """Make (or reuse) the stand-in bases; returns the compose variables that select them."""
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts/container-bases.sh")],
        env=podman_env(),
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(line.split("=", 1) for line in result.stdout.split())


def _pip_settings() -> dict[str, str]:
    """The settings pip uses on this machine (files and PIP_ variables alike), as key -> value."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    return {m["key"]: m["value"] for line in listed.splitlines() if (m := PIP_SETTING.match(line))}


def pip_build_volumes(work_dir: Path) -> list[str]:
    """`--volume` arguments that give pip inside a build this machine's settings: one pip.conf with all of them at
    /etc/pip.conf, and every local file or folder they name at its own path (the CA bundle, the constraints, the
    local wheel folders)."""
    settings = _pip_settings()
    conf = work_dir / "pip.conf"
    conf.write_text("[global]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items()))
    volumes = [f"{conf}:/etc/pip.conf:ro"]
    for key, value in settings.items():
        if key not in PIP_PATH_KEYS:
            continue
        for item in value.split():
            # a local index's pages link to files beside the index folder: mount the folder above it
            path = str(Path(urlsplit(item).path).parent) if item.startswith("file:") else item
            if path.startswith("/") and Path(path).exists():
                volumes.append(f"{path}:{path}:ro")
    return sorted(set(volumes))


def build_image(tag: str, dockerfile: Path, build_args: dict[str, str], log: Path) -> None:
    """`podman build` of DOCKERFILE from the repository root; the RUN steps reach the package registries through the
    host's network, as the machine's own pip does. Cached layers are reused, so an unchanged environment costs
    seconds."""
    command = ["podman", "build", "--network", "host", "--tag", tag, "--file", str(dockerfile)]
    for volume in pip_build_volumes(log.parent):
        command += ["--volume", volume]
    for name, value in build_args.items():
        command += ["--build-arg", f"{name}={value}"]
    with log.open("w") as out:
        result = subprocess.run(
            [*command, str(REPO_ROOT)], env=podman_env(), stdout=out, stderr=subprocess.STDOUT, timeout=3600
        )
    assert result.returncode == 0, f"podman build failed; the end of {log}:\n{log.read_text()[-4000:]}"


@contextmanager
def docker_socket(directory: Path) -> Iterator[str]:
    """podman's Docker-compatible API on a socket in DIRECTORY; yields the DOCKER_HOST that reaches it."""
    socket = directory / "podman.sock"
    log = (directory / "podman-service.log").open("w")
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        env=podman_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            assert service.poll() is None and time.monotonic() < deadline, "podman's API service did not start"
            time.sleep(0.2)
        yield f"unix://{socket}"
    finally:
        service.terminate()
        service.wait(timeout=30)
        log.close()


class HealthChecks:
    """Runs `podman healthcheck run` for every running container of a compose project, every INTERVAL_S: the
    timer systemd would keep, without which every container stays "starting" and `depends_on: service_healthy`
    waits for ever."""

    INTERVAL_S = 5.0

    def __init__(self, project: str) -> None:
        self.project = project
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="podman-healthchecks", daemon=True)

    def __enter__(self) -> HealthChecks:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _loop(self) -> None:
        while not self._stop.wait(self.INTERVAL_S):
            for container in containers(self.project, running_only=True):
                if container["has_healthcheck"]:
                    podman("healthcheck", "run", container["id"], timeout=30, check=False)


def containers(project: str, *, running_only: bool = False) -> list[dict]:
    """The project's containers: id, compose service, state, health ("" without a health check), restarts, the
    host pid of its init."""
    listed = podman("ps", "--all", "--filter", f"label=com.docker.compose.project={project}", "--format", "json")
    found = []
    for entry in json.loads(listed.stdout or "[]"):
        if running_only and entry["State"] != "running":
            continue
        inspected = json.loads(podman("inspect", entry["Id"], check=False).stdout or "[{}]")[0]
        health = (inspected.get("State") or {}).get("Health") or {}
        found.append(
            {
                "id": entry["Id"],
                "service": entry["Labels"].get("com.docker.compose.service", ""),
                "state": entry["State"],
                "health": health.get("Status", ""),
                "has_healthcheck": bool((inspected.get("Config") or {}).get("Healthcheck")),
                "restarts": inspected.get("RestartCount", 0),
                "pid": (inspected.get("State") or {}).get("Pid", 0),
            }
        )
    return found


def leftovers(project: str) -> dict[str, list[str]]:
    """The project's containers, volumes and networks that still exist."""
    label = f"label=com.docker.compose.project={project}"
    return {
        kind: podman(
            kind, "ls", "--filter", label, "--format", "{{.Name}}" if kind != "container" else "{{.Names}}"
        ).stdout.split()
        for kind in ("container", "volume", "network")
    }


def volume_path(volume: str) -> Path:
    """Where a named volume's files are on this machine (podman's local driver, as root)."""
    return Path(podman("volume", "inspect", volume, "--format", "{{.Mountpoint}}").stdout.strip())
