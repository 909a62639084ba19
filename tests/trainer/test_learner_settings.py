"""The learner's settings: its generation servers (one URL or several, from flags or the environment, checked
alike), the NCCL address, and timeouts that fit the run."""

import os
import subprocess
import sys

import pytest

from cfpo.clients.generation import PAUSE_BASE_S, pause_timeout
from tests import REPO_ROOT
from trainer.__main__ import parse_settings
from trainer.settings import PROCESS_GROUP_MARGIN_S


@pytest.mark.parametrize(
    ("environment", "flags", "expected"),
    [
        ("http://a:1, http://b:2", [], ["http://a:1", "http://b:2"]),
        ("http://a:1", ["--generation-urls", "http://x:1,http://y:2"], ["http://x:1", "http://y:2"]),
        ("", ["--generation-urls", "http://x:1", "--generation-urls", "http://y:2"], ["http://x:1", "http://y:2"]),
        ("", [], ["http://127.0.0.1:8000"]),
    ],
)
def test_servers_come_from_flags_or_the_environment(environment, flags, expected, monkeypatch):
    monkeypatch.setenv("CFPO_GENERATION_URL", environment)
    assert parse_settings(["--worker", *flags]).generation_urls == expected


@pytest.mark.parametrize(
    ("environment", "flags", "problem"),
    [
        ("localhost:8000", [], "'localhost:8000': expected an http:// or https:// URL"),
        (
            "",
            ["--generation-urls", "http://a:1,http://a:1"],
            "a server is listed twice; each takes its own share of the groups",
        ),
    ],
)
def test_a_bad_server_list_is_one_line_naming_the_setting(environment, flags, problem, monkeypatch, capsys):
    monkeypatch.setenv("CFPO_GENERATION_URL", environment)
    with pytest.raises(SystemExit) as exited:
        parse_settings(["--worker", *flags])
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"error: generation_urls: {problem}\n"


def test_the_nccl_address_is_the_setting_then_the_pods_ip(monkeypatch):
    monkeypatch.delenv("CFPO_WEIGHT_TRANSFER_ADDRESS", raising=False)
    monkeypatch.delenv("POD_IP", raising=False)
    assert parse_settings(["--worker"]).weight_transfer_address == "127.0.0.1"
    monkeypatch.setenv("POD_IP", "10.0.0.7")  # Kubernetes
    assert parse_settings(["--worker"]).weight_transfer_address == "10.0.0.7"
    monkeypatch.setenv("CFPO_WEIGHT_TRANSFER_ADDRESS", "learner")  # compose: the service's name
    assert parse_settings(["--worker"]).weight_transfer_address == "learner"
    assert parse_settings(["--worker", "--weight-transfer-address", "10.1.1.1"]).weight_transfer_address == "10.1.1.1"


def test_collectives_wait_longer_than_rank_0_waits_for_data_and_disk():
    settings = parse_settings(["--worker"])
    assert settings.collective_timeout.total_seconds() == 600 + 600 + PROCESS_GROUP_MARGIN_S
    longer = parse_settings(["--worker", "--data-timeout", "3600"])
    assert longer.collective_timeout.total_seconds() == 3600 + 600 + PROCESS_GROUP_MARGIN_S  # follows data_timeout
    given = parse_settings(["--worker", "--process-group-timeout", "900"])
    assert given.collective_timeout.total_seconds() == 900


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--process-group-timeout", "600"], "600 s is not above data_timeout (600 s)"),
        (["--process-group-timeout", "900", "--disk-wait-s", "1200"], "900 s is not above disk_wait_s (1200 s)"),
    ],
)
def test_a_process_group_timeout_within_rank_0s_waits_is_refused(flags, problem, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_settings(["--worker", *flags])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: process_group_timeout: {problem}") and "leave it out (default: " in error


def test_a_push_lets_generation_pause_for_the_runs_longest_completion():
    assert pause_timeout(0) == PAUSE_BASE_S == 120.0  # the former fixed timeout: a short request
    assert pause_timeout(3072) == pytest.approx(120.0 + 0.1 * 3072)  # configs/sweep-gpu.yaml: 427 s
    settings = parse_settings(["--worker"])
    assert settings.pause_timeout_for(3072) == pause_timeout(3072)
    assert parse_settings(["--worker", "--pause-timeout", "45"]).pause_timeout_for(3072) == 45.0


@pytest.mark.slow
def test_the_process_group_takes_the_timeout(tmp_path):
    """``init_distributed`` hands the timeout to the group it forms (DeepSpeed's own default is 10 minutes)."""
    script = (
        "from datetime import timedelta\n"
        "import torch, torch.distributed as dist\n"
        "from trainer.distributed import init_distributed\n"
        "init_distributed(timedelta(seconds=4321))\n"
        "print(dist.group.WORLD._get_backend(torch.device('cpu')).options._timeout.total_seconds())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "4321.0"
