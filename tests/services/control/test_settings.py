"""`cfpo serve control` settings: bad ones print one line naming the field (no traceback) and exit 2."""

import os
import subprocess
import sys

import pytest

from tests import REPO_ROOT


@pytest.mark.parametrize(
    "args, token, message",
    [
        (["--port", "http"], "", "error: port: Input should be a valid integer"),
        (["--heartbeat-timeout-s", "0"], "", "error: heartbeat_timeout_s: Input should be greater than 0"),
        (["--generation-url", "localhost:8000"], "", "error: generation_url: 'localhost:8000': expected an http://"),
        (["--host", "0.0.0.0"], "", "error: host: listening on 0.0.0.0 without a token"),
        (["--token", "secret"], "", "error: unrecognized arguments: --token secret"),
    ],
)
def test_bad_settings_print_the_field_not_a_traceback(args, token, message):
    env = {**os.environ, "CFPO_API_TOKEN": token}
    result = subprocess.run(
        [sys.executable, "-m", "services.control", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
