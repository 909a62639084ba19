"""The Grafana dashboards: the committed JSON is what cfpo/cli/dashboards.py generates, every query names real metrics,
and every panel's PromQL returns data from a real Prometheus scraping the real services during a CFPO run and a
GRPO run (Grafana itself cannot be installed on these machines; its variables are substituted as "All" would)."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import httpx
import pytest

from cfpo.cli import dashboards
from cfpo.cli.stack import Stack, StackSettings
from tests import REPO_ROOT
from tests.deploy.test_prometheus import METRIC_NAME, defined_series_names, needs_prometheus
from tests.servers import stack_port_offset

COMMITTED = [REPO_ROOT / "deploy/grafana/dashboards", REPO_ROOT / "helm/cfpo/dashboards"]
SCRAPE_INTERVAL_S = 1  # a short run still spans several scrapes
RATE_INTERVAL = "10s"  # Grafana's $__rate_interval is at least 4 scrape intervals
VLLM_METRIC = re.compile(r"vllm:\w+")


def all_queries() -> list[tuple[str, str, str]]:
    return [(d.uid, p.title, q.expr) for d in dashboards.DASHBOARDS for p in d.panels for q in p.queries]


def as_all_selected(expr: str, rate_interval: str = RATE_INTERVAL) -> str:
    return expr.replace("$run", ".*").replace("$loss", ".*").replace("$__rate_interval", rate_interval)


@pytest.mark.parametrize("directory", COMMITTED, ids=lambda d: str(d.relative_to(REPO_ROOT)))
def test_committed_dashboards_are_generated_from_the_definitions(directory):
    for dashboard in dashboards.DASHBOARDS:
        path = directory / dashboard.file_name
        assert path.exists() and path.read_text() == dashboards.render(dashboard), (
            f"{path} is out of date: run `cfpo dashboards`"
        )
    assert sorted(p.name for p in directory.glob("*.json")) == sorted(d.file_name for d in dashboards.DASHBOARDS)


def test_dashboards_have_the_issue_panels_variables_and_datasource():
    titles = {d.uid: {p.title for p in d.panels} for d in dashboards.DASHBOARDS}
    assert {
        "Reward",
        "Held-out accuracy",
        "Optimizer steps per minute",
        "Tokens per second",
        "Policy version",
        "Queue depth",
    } <= titles["cfpo-run-overview"]
    assert {
        "Clip fraction",
        "Clip fraction by staleness",
        "KL (k3)",
        "Total variation",
        "Entropy",
        "Ratio range",
        "Effective sample size",
        "Policy loss and gradient norm",
    } <= titles["cfpo-staleness-probe"]
    assert {
        "Generation throughput",
        "Generation latency",
        "Reward latency",
        "Reward error ratio",
        "Weight sync time",
    } <= titles["cfpo-services"]
    for dashboard in dashboards.DASHBOARDS:
        model = dashboards.to_grafana(dashboard)
        assert [v["name"] for v in model["templating"]["list"]] == ["run", "loss"]
        assert all(v["allValue"] == ".*" and v["multi"] for v in model["templating"]["list"])
        for panel in model["panels"]:
            assert panel["datasource"]["uid"] == dashboards.DATASOURCE_UID
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
            assert panel["description"], panel["title"]


def test_queries_name_only_defined_metrics():
    defined = defined_series_names()
    for uid, title, expr in all_queries():
        unknown = {name for name in METRIC_NAME.findall(expr) if name not in defined}
        assert not unknown, f"{uid} / {title}: {unknown} not in cfpo/metrics.py"
        if "$run" in expr and "cfpo_learner" in expr:
            assert 'run=~"$run"' in expr, f"{uid} / {title}: a learner query must follow the run variable"


# --- against a real Prometheus scraping a real CFPO run and a real GRPO run ---------------------------------------


def _run_spec(model: Path, loss: str) -> dict:
    return {
        "name": f"dashboards-{loss}",
        "model": str(model),
        "task": {"kind": "arithmetic", "difficulty": [1, 2], "seed": 0},
        "rollout": {"group_size": 4, "prompts_per_step": 4, "max_tokens": 16, "rewards": {"digit_share": 1.0}},
        "learner": {
            "loss": {"name": loss, "ratio_reference": "proximal"},
            "iterations": 2,
            "optimizer": {"lr": 5.0e-3},
        },
        # fixed staleness 2 with 2 versions per step: samples of more than one staleness bucket
        "staleness": {"mode": "fixed", "k": 2},
        "evaluation": {"problems": 8},
        # enough steps to span several 1 s scrapes: a tiny step takes well under a second, and a histogram whose
        # every observation falls between two scrapes has no rate, so no quantile
        "steps": 16,
        "checkpoint_every": 16,
        "seed": 0,
    }


@pytest.fixture(scope="module")
def scraped_runs(tiny_model_dir, tmp_path_factory):
    """A stack with Prometheus, after a CFPO run and a GRPO run have finished; yields (stack, start time, runs)."""
    base = tmp_path_factory.mktemp("dashboards")
    settings = StackSettings(
        model=tiny_model_dir,
        state_dir=base / "state",
        runs_dir=base / "runs",
        scrape_interval_s=SCRAPE_INTERVAL_S,
        **StackSettings.offset_ports(stack_port_offset()),
    )
    stack = Stack(settings)
    started = time.time()
    stack.start()
    try:
        runs = {}
        for loss in ("cfpo", "grpo"):
            created = httpx.post(f"{stack.control_url}/v1/runs", json=_run_spec(tiny_model_dir, loss), timeout=30)
            assert created.status_code == 201, created.text
            runs[loss] = created.json()["id"]
        for loss, run_id in runs.items():
            deadline = time.monotonic() + 400
            while (run := httpx.get(f"{stack.control_url}/v1/runs/{run_id}", timeout=10).json())["state"] not in (
                "succeeded",
                "failed",
                "cancelled",
            ):
                stack.check_alive()
                assert time.monotonic() < deadline, f"{loss} run did not finish"
                time.sleep(2)
            assert run["state"] == "succeeded", run
        time.sleep(3 * SCRAPE_INTERVAL_S)  # scrapes after the last step
        yield stack, started, runs
    finally:
        stack.stop()


def _prometheus(stack: Stack, path: str, **params) -> list[dict]:
    url = f"http://127.0.0.1:{stack.settings.prometheus_port}/api/v1/{path}"
    answer = httpx.get(url, params=params, timeout=30).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"] if isinstance(answer["data"], dict) else answer["data"]


@needs_prometheus
@pytest.mark.slow
def test_every_target_is_up(scraped_runs):
    stack, _, _ = scraped_runs
    up = {r["metric"]["job"]: r["value"][1] for r in _prometheus(stack, "query", query="up")}
    assert up == {job: "1" for job in ("generation", "reward", "control", "learner", "rollout")}


@needs_prometheus
@pytest.mark.slow
def test_variables_list_both_runs_and_losses(scraped_runs):
    stack, _, runs = scraped_runs
    for label, expected in (("run", set(runs.values())), ("loss", {"cfpo", "grpo"})):
        values = _prometheus(stack, f"label/{label}/values", **{"match[]": dashboards.VARIABLE_SOURCE})
        assert expected <= set(values)


@needs_prometheus
@pytest.mark.slow
@pytest.mark.parametrize(
    "uid,title,expr", all_queries(), ids=[f"{u}/{t}/{i}" for i, (u, t, _) in enumerate(all_queries())]
)
def test_panel_query_returns_data_over_the_runs(scraped_runs, uid, title, expr):
    stack, started, _ = scraped_runs
    series = _prometheus(
        stack, "query_range", query=as_all_selected(expr), start=started, end=time.time(), step=f"{SCRAPE_INTERVAL_S}s"
    )
    values = [float(v) for s in series for _, v in s["values"]]
    assert any(not math.isnan(v) for v in values), f"{uid} / {title}: no data for {as_all_selected(expr)}"


@needs_prometheus
@pytest.mark.slow
def test_staleness_probe_shows_both_losses_and_several_staleness_buckets(scraped_runs):
    stack, _, _ = scraped_runs
    clip = _prometheus(stack, "query", query="cfpo_learner_behaviour_clip_frac_by_staleness")
    assert {s["metric"]["loss"] for s in clip} == {"cfpo", "grpo"}
    assert len({s["metric"]["staleness_bucket"] for s in clip}) >= 2
    accuracy = _prometheus(stack, "query", query="cfpo_learner_eval_accuracy")
    assert {s["metric"]["loss"] for s in accuracy} == {"cfpo", "grpo"}
    assert all(0.0 <= float(s["value"][1]) <= 1.0 for s in accuracy)
