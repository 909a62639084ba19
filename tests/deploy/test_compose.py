"""docker-compose.yml with what it mounts and builds: Compose (`docker-compose config`) and the compose-spec schema
accept it, each profile runs the services it should, wired as the pipeline needs (nothing internal published,
health checks, dependencies, the shared volume, GPUs); the Dockerfiles are multi-stage, pinned and non-root;
promtool accepts the Prometheus config, whose jobs are the stack's; Grafana's provisioning matches the mounts.
No Docker engine is needed: images are checked by reading their Dockerfiles."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from cfpo.cli.app import SERVICES
from cfpo.cli.stack import Stack, StackSettings
from services.control.settings import ControlSettings
from tests import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"
PROMETHEUS_DIR = REPO_ROOT / "deploy/prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
GRAFANA = REPO_ROOT / "deploy/grafana"
DOCKERFILES = {"cpu": REPO_ROOT / "deploy/docker/Dockerfile", "gpu": REPO_ROOT / "deploy/docker/Dockerfile.gpu"}
TOKEN = "compose-test-token"
REDIS_PASSWORD = "composeRedisPassword0"

ALWAYS = {"redis", "model", "reward", "control", "rollout", "prometheus", "grafana"}
PROFILES = {"cpu": ALWAYS | {"generation-cpu", "learner-cpu"}, "gpu": ALWAYS | {"generation-gpu", "learner-gpu"}}
USER_FACING = {"control", "prometheus", "grafana"}  # the only services with published ports
ONE_SHOT = {"model"}

needs_compose = pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")


def run_compose(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    """`docker-compose -f docker-compose.yml ARGS` in the repository (so it reads .env), with none of the caller's
    COMPOSE_, CFPO_, GRAFANA_ or DOCKER_ settings leaking in."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "CFPO_", "GRAFANA_", "DOCKER_"))}
    return subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), *args],
        cwd=REPO_ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def resolved(*args: str, **env: str) -> dict:
    result = run_compose(*args, "config", **env)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


# The ways to ask for each profile: .env's default, the environment, the command line flag.
INVOCATIONS = {
    "cpu": [((), {})],
    "gpu": [((), {"COMPOSE_PROFILES": "gpu"}), (("--profile", "gpu"), {})],
}


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def profile(request) -> tuple[str, dict[str, dict]]:
    """(profile, its active services) from the resolved config. Compose v1's `config` prints every service with its
    `profiles` (v2 prints only the active ones), so the selection Compose applies at `up` is applied here."""
    args, env = INVOCATIONS[request.param][0]
    return request.param, active(
        resolved(*args, CFPO_API_TOKEN=TOKEN, CFPO_REDIS_PASSWORD=REDIS_PASSWORD, **env), {request.param}
    )


def active(config: dict, profiles: set[str]) -> dict[str, dict]:
    return {
        name: service
        for name, service in config["services"].items()
        if not service.get("profiles") or profiles & set(service["profiles"])
    }


def volumes(service: dict) -> dict[str, tuple[str, bool]]:
    """target -> (source, read-only), from the short syntax Compose v1 prints or the long one of v2."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            mounts[target] = (source, mode == ["ro"])
        else:
            mounts[volume["target"]] = (volume["source"], bool(volume.get("read_only")))
    return mounts


def published(service: dict) -> list[tuple[str, int]]:
    """(host address, container port) of every published port."""
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, str):
            host, _, target = port.split("/")[0].rpartition(":")
            ports.append((host.rpartition(":")[0], int(target)))
        else:
            ports.append((port.get("host_ip", ""), int(port["target"])))
    return ports


def container_ports(service: dict) -> set[int]:
    return {int(p) for p in service.get("expose", [])} | {target for _, target in published(service)}


def names(service_name: str, service: dict) -> set[str]:
    """The names a service answers to on the compose network."""
    networks = service.get("networks") or {}
    return {service_name} | {alias for network in networks.values() for alias in (network or {}).get("aliases", [])}


def probe_url(service: dict) -> str:
    return next(word for word in service["healthcheck"]["test"] if str(word).startswith("http://"))


# --- Compose itself ---------------------------------------------------------------------------------------------


@needs_compose
@pytest.mark.parametrize("args, env", [case for cases in INVOCATIONS.values() for case in cases])
def test_compose_config_accepts_the_file(args, env):
    result = run_compose(*args, "config", "--quiet", CFPO_API_TOKEN=TOKEN, CFPO_REDIS_PASSWORD=REDIS_PASSWORD, **env)
    assert result.returncode == 0, result.stderr


def test_compose_spec_schema_accepts_the_file():
    check = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_cpu_is_the_default_profile():
    settings = dict(
        line.split("=", 1)
        for line in (REPO_ROOT / ".env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert settings["COMPOSE_PROFILES"] == "cpu"


@needs_compose
def test_api_token_comes_from_the_environment(profile, monkeypatch):
    _, services = profile
    assert services["control"]["environment"]["CFPO_API_TOKEN"] == TOKEN
    assert [name for name, s in services.items() if "CFPO_API_TOKEN" in (s.get("environment") or {})] == ["control"]
    # Without one, compose passes it empty, and the API, told to listen beyond loopback, refuses to start.
    control = active(resolved(CFPO_REDIS_PASSWORD=REDIS_PASSWORD), {"cpu"})["control"]
    command = control["command"]
    for key, value in control["environment"].items():
        monkeypatch.setenv(key, value)
    assert os.environ["CFPO_API_TOKEN"] == ""
    with pytest.raises(ValueError, match="set CFPO_API_TOKEN"):
        ControlSettings(host=command[command.index("--host") + 1])


# --- What each profile runs and how it is wired -----------------------------------------------------------------


@needs_compose
def test_each_profile_runs_its_services(profile):
    name, services = profile
    assert set(services) == PROFILES[name]
    on_network = {n for service_name, s in services.items() for n in names(service_name, s)}
    assert {"generation", "learner"} <= on_network  # whichever variant runs, under the names the others use
    images = {service_name: s["image"] for service_name, s in services.items()}
    expected = "cfpo/cfpo-gpu:0.1.0" if name == "gpu" else "cfpo/cfpo:0.1.0"
    assert images[f"generation-{name}"] == images[f"learner-{name}"] == expected
    assert {images[s] for s in ("model", "reward", "control", "rollout")} == {"cfpo/cfpo:0.1.0"}


@needs_compose
def test_only_user_facing_services_publish_ports_on_loopback(profile):
    _, services = profile
    assert {name for name, s in services.items() if published(s)} == USER_FACING
    for name in USER_FACING:  # unless CFPO_PUBLISH_ADDRESS widens it
        assert {host for host, _ in published(services[name])} == {"127.0.0.1"}, name
    widened = active(
        resolved(CFPO_API_TOKEN=TOKEN, CFPO_REDIS_PASSWORD=REDIS_PASSWORD, CFPO_PUBLISH_ADDRESS="0.0.0.0"), {"cpu"}
    )
    assert {host for name in USER_FACING for host, _ in published(widened[name])} == {"0.0.0.0"}


@needs_compose
def test_dependencies_exist_in_the_profile_and_have_conditions(profile):
    name, services = profile
    for service_name, service in services.items():
        for target, dependency in (service.get("depends_on") or {}).items():
            assert target in services, f"{service_name} depends on {target}, which this profile does not run"
            if dependency["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{service_name} waits for {target}: no health check"
            else:
                assert dependency["condition"] == "service_completed_successfully" and target in ONE_SHOT
    assert set(services[f"learner-{name}"]["depends_on"]) == {"redis", f"generation-{name}"}
    assert set(services[f"generation-{name}"]["depends_on"]) == {"model"}
    assert set(services["rollout"]["depends_on"]) == {"redis", "reward"}


@needs_compose
def test_long_running_services_have_health_checks_on_their_own_ports(profile):
    _, services = profile
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no"
            continue
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"][0] == "CMD" and not service["healthcheck"].get("disable"), name
        if name != "redis":  # the others answer HTTP
            assert urlsplit(probe_url(service)).port in container_ports(service), name


@needs_compose
def test_redis_asks_every_client_for_the_password_from_the_environment(profile):
    _, services = profile
    redis = services["redis"]
    assert redis["command"][redis["command"].index("--requirepass") + 1] == REDIS_PASSWORD
    assert redis["environment"]["REDISCLI_AUTH"] == REDIS_PASSWORD  # the health check's redis-cli
    urls = {
        name: s["environment"]["REDIS_URL"] for name, s in services.items() if "REDIS_URL" in s.get("environment", {})
    }
    assert urls and set(urls.values()) == {f"redis://:{REDIS_PASSWORD}@redis:6379/0"}
    missing = run_compose("config", CFPO_API_TOKEN=TOKEN)
    assert missing.returncode != 0 and "set CFPO_REDIS_PASSWORD" in missing.stderr


@needs_compose
def test_redis_persists_append_only_on_a_named_volume(profile):
    _, services = profile
    redis = services["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert redis["command"][redis["command"].index("--maxmemory") + 1] == "1024mb"  # refuses writes, not OOM-killed
    assert redis["command"][redis["command"].index("--maxmemory-policy") + 1] == "noeviction"
    source, read_only = volumes(redis)["/data"]
    assert source == "redis-data" and not read_only


def test_the_control_api_sees_the_data_volume_read_only_to_check_task_files(profile):
    _, services = profile
    assert volumes(services["control"])["/data"] == ("cfpo-data", True)


def test_the_learner_is_given_time_to_checkpoint_and_hand_its_run_back(profile):
    name, services = profile
    assert services[f"learner-{name}"]["stop_grace_period"] == "10m"
    assert services["control"]["stop_grace_period"] == "30s"


@needs_compose
def test_generation_and_learner_share_the_data_and_weights_volumes(profile):
    name, services = profile
    mounts = {
        service: volumes(services[service]).get("/data")
        for service in (f"generation-{name}", f"learner-{name}", "model", "rollout")
    }
    assert {source for source, _ in mounts.values()} == {"cfpo-data"}
    # The learner and model preparation write; generation (its dev routes run code) and rollout only read.
    assert {service: read_only for service, (_, read_only) in mounts.items()} == {
        f"generation-{name}": True,
        f"learner-{name}": False,
        "model": False,
        "rollout": True,
    }
    learner = services[f"learner-{name}"]["command"]
    assert PurePosixPath(learner[learner.index("--runs-dir") + 1]).is_relative_to("/data")
    staged = {
        service: volumes(services[service]).get("/weights") for service in (f"generation-{name}", f"learner-{name}")
    }
    assert staged == {f"generation-{name}": ("cfpo-weights", True), f"learner-{name}": ("cfpo-weights", False)}
    assert learner[learner.index("--weights-dir") + 1] == "/weights"
    model_dir = services["model"]["command"][-1]
    generation = services[f"generation-{name}"]["command"]
    assert generation[generation.index("--model") + 1] == model_dir
    assert PurePosixPath(model_dir).is_relative_to("/data")


@needs_compose
def test_run_specs_submitted_in_the_control_container_name_the_served_model(profile):
    """`docker compose exec control cfpo run submit /opt/cfpo/configs/demo.yaml` resolves the spec's relative model
    from the image's working directory: it must come out as the directory generation serves."""
    _, services = profile
    workdir = [args for instruction, args in stages(DOCKERFILES["cpu"])[-1]["body"] if instruction == "WORKDIR"][-1]
    spec_model = yaml.safe_load((REPO_ROOT / "configs/demo.yaml").read_text())["model"]
    assert str(PurePosixPath(workdir) / spec_model) == services["model"]["command"][-1]
    assert services["control"]["image"] == "cfpo/cfpo:0.1.0" and "configs" not in dockerignored()


@needs_compose
def test_gpu_profile_reserves_nvidia_devices_for_generation_and_learner(profile):
    name, services = profile
    for service_name, service in services.items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if name == "gpu" and service_name in ("generation-gpu", "learner-gpu"):
            assert [(d["driver"], d["capabilities"]) for d in devices] == [("nvidia", ["gpu"])], service_name
        else:
            assert devices == [], service_name
    if name == "gpu":
        generation = services["generation-gpu"]["command"]
        assert generation[generation.index("--device") + 1] == "cuda"
        # Both on GPU 0 by default: CUDA IPC (NCCL cannot hold two ranks on one GPU), in one IPC namespace.
        for service_name in ("generation-gpu", "learner-gpu"):
            assert services[service_name]["environment"]["CFPO_WEIGHT_TRANSFER"] == "ipc"
        assert services["generation-gpu"]["ipc"] == "shareable"
        assert services["learner-gpu"]["ipc"] == "service:generation-gpu"
        # nccl: generation's workers reach the learner's rendezvous by its name on the compose network.
        address = services["learner-gpu"]["environment"]["CFPO_WEIGHT_TRANSFER_ADDRESS"]
        assert address in services["learner-gpu"]["networks"]["default"]["aliases"]


@cache
def service_help(service: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", SERVICES[service], "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
        cwd=REPO_ROOT,
    ).stdout


@needs_compose
def test_service_commands_use_options_their_cli_has(profile):
    """Each `cfpo serve SERVICE ...` line uses options of that service's own --help, and listens on the port its
    health check probes."""
    _, services = profile
    for name, service in services.items():
        command = service.get("command") or []
        if command[:2] != ["cfpo", "serve"]:
            continue
        for option in (word for word in command[3:] if word.startswith("--")):
            assert option in service_help(command[2]), f"{name}: `cfpo serve {command[2]}` has no {option}"
        port_option = next(o for o in ("--port", "--metrics-port") if o in command)
        assert int(command[command.index(port_option) + 1]) == urlsplit(probe_url(service)).port, name


# --- Images -----------------------------------------------------------------------------------------------------


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in text.splitlines() if line.strip()
    ]


def stages(dockerfile: Path) -> list[dict]:
    """Each stage's base image (global ARG defaults substituted) and instructions."""
    global_args, result = {}, []
    for instruction, args in instructions(dockerfile):
        if instruction == "FROM":
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args[m.group(1)], args.split()[0])
            result.append({"image": image, "name": args.split()[-1] if " AS " in args.upper() else None, "body": []})
        elif not result and instruction == "ARG":
            key, _, default = args.partition("=")
            global_args[key] = default.strip('"')
        else:
            result[-1]["body"].append((instruction, args))
    return result


def pinned(image: str) -> bool:
    """A tag naming a full version (major.minor.patch), and no registry host in the name."""
    repository, _, tag = image.rpartition(":")
    return bool(repository) and re.search(r"\d+\.\d+\.\d+", tag) is not None and "." not in repository.split("/")[0]


def test_pin_check_catches_floating_images():
    assert pinned("python:3.11.13-slim-bookworm") and pinned("vllm/vllm-openai:v0.32.0")
    assert not any(
        pinned(image)
        for image in ("python", "python:latest", "redis:alpine", "redis:7.4-alpine", "registry.example/x/y:1.0.0")
    )


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfiles_are_multi_stage_pinned_and_non_root(kind):
    built = stages(DOCKERFILES[kind])
    assert len(built) >= 2
    assert all(pinned(stage["image"]) for stage in built), [stage["image"] for stage in built]
    final = built[-1]["body"]
    user = [args for instruction, args in final if instruction == "USER"][-1].split(":")[0]
    assert user.isdigit() and int(user) != 0  # numeric, so that Kubernetes' runAsNonRoot can verify it
    builder = built[0]["name"]
    assert any(instruction == "COPY" and f"--from={builder}" in args for instruction, args in final)


def test_cpu_image_is_made_by_the_project_set_up():
    builder, final = stages(DOCKERFILES["cpu"])
    runs = " ".join(args for instruction, args in builder["body"] if instruction == "RUN")
    assert "scripts/setup.sh" in runs and "CFPO_SYSTEM_PACKAGES=0" in runs
    # A virtual environment is not relocatable: the same interpreter and the same path in both stages.
    assert builder["image"] == final["image"]
    venv = [args for instruction, args in final["body"] if instruction == "COPY" and ".venv" in args]
    assert venv and venv[0].split()[-2] == venv[0].split()[-1]


def test_gpu_image_installs_the_set_ups_pinned_requirements_over_vllms_image():
    builder, final = stages(DOCKERFILES["gpu"])
    assert builder["image"] == final["image"] and builder["image"].startswith("vllm/vllm-openai:v")
    runs = " ".join(args for instruction, args in builder["body"] if instruction == "RUN")
    assert "--system-site-packages" in runs  # vLLM and its CUDA torch come from the base image
    for flags in (
        "--no-build-isolation -c requirements/constraints.txt -r requirements/main.txt",
        "--no-deps -r requirements/no-deps.txt",
    ):
        assert flags in runs
    assert ("ENTRYPOINT", "[]") in final["body"]  # not vLLM's `vllm serve`


def dockerignored() -> set[str]:
    return {
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfiles_copy_files_the_build_context_has(kind):
    ignored = dockerignored()
    for stage in stages(DOCKERFILES[kind]):
        for instruction, args in stage["body"]:
            if instruction != "COPY" or "--from=" in args:
                continue
            for source in [word for word in args.split() if not word.startswith("--")][:-1]:
                assert (REPO_ROOT / source).exists(), source
                assert source == "." or Path(source).parts[0] not in ignored, source
    assert {".env", ".git", ".venv"} <= ignored  # no user settings, history or local environment in an image


@needs_compose
def test_compose_builds_the_images_from_these_dockerfiles(profile):
    _, services = profile
    for name, service in services.items():
        assert pinned(service["image"]), (name, service["image"])
        if "build" in service:
            assert Path(service["build"]["context"]) == REPO_ROOT
            dockerfile = REPO_ROOT / service["build"]["dockerfile"]
            assert dockerfile == DOCKERFILES["gpu" if "gpu" in service["image"] else "cpu"], name


# --- Prometheus ---------------------------------------------------------------------------------------------------


@needs_promtool
def test_promtool_accepts_the_config_and_its_rules():
    check = subprocess.run(
        ["promtool", "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "rules.yml" in check.stdout + check.stderr  # the rule file was found and checked too


def scrape_targets() -> dict[str, list[tuple[str, int]]]:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = {}
    for job in config["scrape_configs"]:
        found = [tuple(t.rsplit(":", 1)) for c in job.get("static_configs", []) for t in c["targets"]]
        found += [(n, c["port"]) for c in job.get("dns_sd_configs", []) for n in c["names"]]
        targets[job["job_name"]] = [(host, int(port)) for host, port in found]
    return targets


def test_jobs_are_the_stack_jobs_and_the_rules_jobs(tmp_path):
    stack = Stack(StackSettings(model=tmp_path / "model", state_dir=tmp_path, prometheus=False))
    stack._write_prometheus_config()
    stack_config = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    stack_jobs = {job["job_name"] for job in stack_config["scrape_configs"]}
    assert set(scrape_targets()) == stack_jobs == {"generation", "reward", "control", "learner", "rollout"}
    rules = (PROMETHEUS_DIR / "rules.yml").read_text()
    assert set(re.search(r'up\{job=~"([^"]+)"\}', rules).group(1).split("|")) == stack_jobs


@needs_compose
def test_every_job_scrapes_a_service_of_the_profile_on_its_port(profile):
    _, services = profile
    by_name = {n: s for service_name, s in services.items() for n in names(service_name, s)}
    for job, targets in scrape_targets().items():
        assert targets, job
        for host, port in targets:
            assert host in by_name, f"job {job}: no service answers to {host}"
            assert port in container_ports(by_name[host]), f"job {job}: {host} does not listen on {port}"


@needs_compose
def test_prometheus_reads_this_config_and_the_rules_beside_it(profile):
    _, services = profile
    prometheus = services["prometheus"]
    config_file = PurePosixPath(
        next(a for a in prometheus["command"] if a.startswith("--config.file=")).split("=", 1)[1]
    )
    mounts = {Path(source): PurePosixPath(target) for target, (source, _) in volumes(prometheus).items()}
    assert mounts[PROMETHEUS_DIR] == config_file.parent and config_file.name == PROMETHEUS_CONFIG.name
    rule_files = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["rule_files"]
    assert all((PROMETHEUS_DIR / name).is_file() and not Path(name).is_absolute() for name in rule_files)


# --- Grafana ------------------------------------------------------------------------------------------------------


def datasource_uids(node) -> set[str]:
    """The uid of every datasource a dashboard's panels and queries name."""
    if isinstance(node, list):
        return set().union(*map(datasource_uids, node))
    if not isinstance(node, dict):
        return set()
    own = {node["datasource"]["uid"]} if isinstance(node.get("datasource"), dict) else set()
    return own.union(*map(datasource_uids, node.values()))


def provisioning(kind: str) -> list[dict]:
    files = sorted((GRAFANA / "provisioning" / kind).glob("*.yml"))
    assert files, kind
    return [yaml.safe_load(f.read_text()) for f in files]


@needs_compose
def test_grafana_datasource_is_the_compose_prometheus_with_the_dashboards_uid(profile):
    _, services = profile
    [datasource] = [d for config in provisioning("datasources") for d in config["datasources"]]
    assert (datasource["uid"], datasource["type"], datasource["isDefault"]) == ("prometheus", "prometheus", True)
    url = urlsplit(datasource["url"])
    assert url.hostname in services and url.port in container_ports(services[url.hostname])
    dashboards = sorted((GRAFANA / "dashboards").glob("*.json"))
    assert dashboards
    for dashboard in dashboards:
        assert datasource_uids(json.loads(dashboard.read_text())) == {datasource["uid"]}, dashboard.name
    scrape_interval = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape_interval


@needs_compose
def test_grafana_provisioning_and_dashboards_are_mounted_where_grafana_reads_them(profile):
    _, services = profile
    grafana = services["grafana"]
    mounts = {Path(source): PurePosixPath(target) for target, (source, _) in volumes(grafana).items()}
    for kind in ("datasources", "dashboards"):
        assert mounts[GRAFANA / "provisioning" / kind] == PurePosixPath("/etc/grafana/provisioning") / kind
    [provider] = [p for config in provisioning("dashboards") for p in config["providers"]]
    assert provider["type"] == "file"
    dashboards_dir = PurePosixPath(provider["options"]["path"])
    assert mounts[GRAFANA / "dashboards"] == dashboards_dir
    home = PurePosixPath(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.parent == dashboards_dir and (GRAFANA / "dashboards" / home.name).is_file()
    assert json.loads((GRAFANA / "dashboards" / home.name).read_text())["uid"] == home.stem


# A machine without a registry swaps each public image through a variable (scripts/container-bases.sh makes the
# stand-ins); unset, each stays the pinned public image.
IMAGE_VARIABLES = {"redis": "CFPO_REDIS_IMAGE", "prometheus": "CFPO_PROMETHEUS_IMAGE", "grafana": "CFPO_GRAFANA_IMAGE"}
BASE_VARIABLES = {"cpu": ("PYTHON_IMAGE", "CFPO_PYTHON_IMAGE"), "gpu": ("VLLM_IMAGE", "CFPO_VLLM_IMAGE")}


def test_public_images_are_variables_whose_defaults_are_pinned():
    secrets = {"CFPO_API_TOKEN": TOKEN, "CFPO_REDIS_PASSWORD": REDIS_PASSWORD}
    stand_ins = {variable: f"localhost/stand-in/{variable.lower()}:1" for variable in IMAGE_VARIABLES.values()}
    stand_ins |= {variable: f"localhost/stand-in/{variable.lower()}:1" for _, variable in BASE_VARIABLES.values()}
    default, swapped = resolved(**secrets)["services"], resolved(**secrets, **stand_ins)["services"]
    for service, variable in IMAGE_VARIABLES.items():
        assert pinned(default[service]["image"]), default[service]["image"]
        assert swapped[service]["image"] == stand_ins[variable]
    for name, service in default.items():
        if "build" not in service:
            continue
        kind = "gpu" if "gpu" in service["image"] else "cpu"
        argument, variable = BASE_VARIABLES[kind]
        # the compose default is the Dockerfile's own, so `docker build` and `docker compose build` agree
        assert service["build"]["args"][argument] == stages(DOCKERFILES[kind])[0]["image"], name
        assert swapped[name]["build"]["args"][argument] == stand_ins[variable], name
