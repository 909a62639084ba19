"""deploy/prometheus/rules.yml: valid for promtool, its unit tests pass, it names only defined metrics, and a real
Prometheus loads every group healthy, as does the config the embedded stack writes."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time

import httpx
import pytest
import yaml

from cfpo import metrics
from cfpo.cli.stack import Stack, StackSettings
from tests import REPO_ROOT

RULES = REPO_ROOT / "deploy/prometheus/rules.yml"
RULES_TEST = REPO_ROOT / "deploy/prometheus/rules_test.yml"

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed")

# A cfpo_ metric name, optionally with the ray_ prefix Ray's metrics agent adds; not part of a recording rule's
# name (those contain colons, e.g. run:cfpo_rollout_groups:per_minute).
METRIC_NAME = re.compile(r"(?<![\w:])(?:ray_)?(cfpo_\w+)(?![\w:])")
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


def defined_series_names() -> set[str]:
    """Every series name the definitions in cfpo/metrics.py export, with Prometheus' suffixes per type."""
    defined = [value for value in vars(metrics).values() if isinstance(value, metrics.Metric)]
    defined += [
        *metrics.LEARNER_GAUGES.values(),
        *metrics.LEARNER_BUCKET_GAUGES.values(),
        *metrics.LEARNER_LAG_BUCKET_GAUGES.values(),
    ]
    return {m.name + suffix for m in defined for suffix in SUFFIXES[m.kind]}


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_rules_use_only_defined_metrics():
    names = defined_series_names()
    assert {
        "cfpo_learner_optimizer_steps_total",
        "cfpo_learner_queue_unread",
        "cfpo_learner_staleness_bucket",
        "cfpo_control_runs_running",
    } <= names
    used = {name for rule in rules() for name in METRIC_NAME.findall(rule["expr"])}
    assert "cfpo_learner_optimizer_steps_total" in used
    assert used - names == set(), "rules.yml names metrics cfpo/metrics.py does not define"
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    for rule in rules():  # recording rules used in an expression must be defined here too
        for name in re.findall(r"[\w]*:[\w:]+", rule["expr"]):
            assert name in recorded, name
    # vLLM's own metrics (vllm:...) are the only other names allowed besides up
    for rule in rules():
        for word in re.findall(r"(?<![\w:\"'$.])[a-z_][\w:]*(?=\s*[{\[])", rule["expr"]):
            assert (
                word in names | recorded | {"up"} or word.startswith("vllm:") or word.removeprefix("ray_") in names
            ), word


def test_name_check_catches_a_renamed_metric():
    assert METRIC_NAME.findall("rate(cfpo_learner_optimizer_step_total[5m]) + x:cfpo_y:z") == [
        "cfpo_learner_optimizer_step_total"
    ]
    assert "cfpo_learner_optimizer_step_total" not in defined_series_names()
    assert "cfpo_learner_optimizer_steps" not in defined_series_names()  # a counter without _total


@needs_promtool
def test_promtool_checks_and_unit_tests_pass():
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        ["promtool", "test", "rules", str(RULES_TEST)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=RULES_TEST.parent,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


@needs_promtool
def test_stack_config_loads_the_rules(tmp_path):
    stack = Stack(StackSettings(model=tmp_path / "model", state_dir=tmp_path, prometheus=False))
    stack._write_prometheus_config()
    config = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    assert config["rule_files"] == [str(RULES)]
    assert {job["job_name"] for job in config["scrape_configs"]} == {
        "generation",
        "reward",
        "control",
        "learner",
        "rollout",
    }
    check = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_prometheus
@pytest.mark.timeout(60)
def test_prometheus_loads_every_rule_group_healthy(tmp_path):
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump({"global": {"evaluation_interval": "1s"}, "rule_files": [str(RULES)], "scrape_configs": []})
    )
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready in 20 s"
            time.sleep(0.2)
        expected = {g["name"]: len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"]}
        deadline = time.monotonic() + 10
        while True:  # rules report health "unknown" until their group's first evaluation
            groups = httpx.get(f"{url}/api/v1/rules", timeout=5).json()["data"]["groups"]
            health = {(g["name"], r["name"]): r["health"] for g in groups for r in g["rules"]}
            if health and all(h == "ok" for h in health.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert {g["name"]: len(g["rules"]) for g in groups} == expected
        assert {key: h for key, h in health.items() if h != "ok"} == {}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    assert process.returncode == 0
