"""`cfpo serve reward` settings: bad ones print one line naming the field (no traceback) and exit 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from services.reward.__main__ import parse_settings
from tests import REPO_ROOT

CFPO = Path(sys.executable).parent / "cfpo"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "70000"], "error: port: Input should be less than or equal to 65535"),
        (["--item-timeout", "soon"], "error: item_timeout: Input should be a valid number"),
        (["--pool-size", "0"], "error: pool_size: Input should be greater than or equal to 1"),
        (["--replicas", "2"], "error: replicas/ray_address: only apply under Ray"),
        (["--plugins", "no.such.module"], "error: plugins: cannot import 'no.such.module'"),
    ],
)
def test_bad_settings_print_the_field_not_a_traceback(args, message):
    result = run(sys.executable, "-m", "services.reward", *args)
    assert result.returncode == 2
    assert result.stderr.startswith(message)
    assert "Traceback" not in result.stderr


def test_config_file_errors_name_file_and_field(tmp_path):
    config = tmp_path / "reward.yaml"
    config.write_text("tasks:\n  math: {math_equivalence: 1.0, nope: 0.5}\n")
    result = run(sys.executable, "-m", "services.reward", "--config", str(config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(config) in result.stderr and "tasks.math: unknown reward function(s) ['nope']" in result.stderr


def test_flags_override_the_config_file(tmp_path):
    config = tmp_path / "reward.yaml"
    config.write_text("port: 9000\npool_size: 3\ntasks:\n  qa: {exact_match: 1.0, length_penalty: 0.2}\n")
    settings = parse_settings(["--config", str(config), "--port", "9001", "--ray", "--replicas", "2"])
    assert (settings.port, settings.pool_size, settings.ray, settings.replicas) == (9001, 3, True, 2)
    assert settings.tasks == {"qa": {"exact_match": 1.0, "length_penalty": 0.2}}


@pytest.mark.skipif(not CFPO.exists(), reason="the cfpo command is not installed in this environment")
def test_cfpo_serve_reward_hands_over_to_the_service():
    result = run(str(CFPO), "serve", "reward", "--port", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: port: Input should be greater than or equal to 1"
