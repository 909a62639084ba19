"""The Grafana dashboards, defined once as data: each panel's title, meaning and PromQL.

``cfpo dashboards`` renders them to Grafana's JSON (through Grafana Labs' typed builders) for compose's
provisioning and the Helm chart's ConfigMap; the tests run every panel's PromQL against a real Prometheus
scraping a real run. Metric names come from ``cfpo.metrics``; ``vllm:`` names are vLLM's own.

Every learner query is filtered by the dashboards' two variables, ``$run`` and ``$loss`` (multi-value, "All" is
``.*``), and legends carry the loss, so CFPO and GRPO runs plot side by side. Trust-region panels plot the metric
against both anchors, each line labelled "vs behaviour" or "vs proximal".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cfpo.metrics import (
    ANCHORS,
    LEARNER_BUCKET_GAUGES,
    LEARNER_EVAL_ACCURACY,
    LEARNER_GAUGES,
    LEARNER_LAG_BUCKET_GAUGES,
    LEARNER_STALENESS,
    LEARNER_STEPS,
    LEARNER_WEIGHT_SYNC_SECONDS,
    REWARD_FUNCTION_CALLS,
    REWARD_REQUEST_SECONDS,
    REWARD_REQUESTS,
    ROLLOUT_ERRORS,
    ROLLOUT_GROUPS,
    ROLLOUT_STAGE_SECONDS,
    Metric,
    anchored,
)

DATASOURCE_UID = "prometheus"
RATE = "$__rate_interval"
RUN_LOSS = 'run=~"$run", loss=~"$loss"'
VARIABLE_SOURCE = LEARNER_GAUGES["policy_version"].name  # every learner run exports it from its first step


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str  # shown in Grafana's panel info and docs/metrics.md's dashboard guide
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: Literal["timeseries", "stat"] = "timeseries"


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]

    @property
    def file_name(self) -> str:
        return f"{self.uid}.json"


def _gauge(key: str, legend: str = "{{loss}} {{run}}") -> Query:
    return Query(f"{LEARNER_GAUGES[key].name}{{{RUN_LOSS}}}", legend)


def _by_staleness(key: str) -> Query:
    return Query(f"{LEARNER_BUCKET_GAUGES[key].name}{{{RUN_LOSS}}}", "{{loss}} staleness {{staleness_bucket}} {{run}}")


def _against_anchors(key: str, by: Literal["step", "staleness", "lag"] = "step", stat: str = "") -> tuple[Query, ...]:
    """Trust-region metric ``key`` against each anchor, per step or per bucket of staleness or policy lag."""
    gauges = {"step": LEARNER_GAUGES, "staleness": LEARNER_BUCKET_GAUGES, "lag": LEARNER_LAG_BUCKET_GAUGES}[by]
    bucket = "" if by == "step" else f" {by} {{{{{by}_bucket}}}}"
    return tuple(
        Query(
            f"{gauges[anchored(anchor, key)].name}{{{RUN_LOSS}}}", f"{stat}{{{{loss}}}} vs {anchor}{bucket} {{{{run}}}}"
        )
        for anchor in ANCHORS
    )


def _series(metric: Metric) -> str:
    """A metric's exported name; counters get Prometheus' ``_total``."""
    return metric.name + ("_total" if metric.kind == "counter" else "")


def _reward(expr_of) -> str:
    """The reward service's series under either name: plain, or ``ray_``-prefixed when it runs under Ray Serve."""
    return f"({expr_of('')}) or ({expr_of('ray_')})"


def _quantile(q: float, histogram: str, by: str = "", selector: str = "") -> str:
    """The q-quantile of a histogram's recent observations, per ``by`` labels."""
    group = ", ".join(label for label in (by, "le") if label)
    matchers = f"{{{selector}}}" if selector else ""
    return f"histogram_quantile({q}, sum by ({group}) (rate({histogram}_bucket{matchers}[{RATE}])))"


RUN_OVERVIEW = Dashboard(
    uid="cfpo-run-overview",
    title="cfpo / Run overview",
    description="Is the run learning, how fast, and is data flowing? One line per run and loss.",
    panels=(
        Panel(
            "Reward",
            "Mean reward of each step's samples (training data, after the staleness of its policy).",
            (_gauge("reward_mean"),),
        ),
        Panel(
            "Held-out accuracy",
            "Share of held-out problems solved (greedy, full reward) at the run's evaluations: before training, "
            "every evaluation.every steps, after the last step.",
            (Query(f"{LEARNER_EVAL_ACCURACY.name}{{{RUN_LOSS}}}", "{{loss}} {{run}}"),),
            unit="percentunit",
        ),
        Panel(
            "Optimizer steps per minute",
            "Policy versions the learner produces per minute.",
            (
                Query(
                    f"sum by (run, loss) (rate({_series(LEARNER_STEPS)}{{{RUN_LOSS}}}[{RATE}])) * 60",
                    "{{loss}} {{run}}",
                ),
            ),
        ),
        Panel(
            "Tokens per second",
            "Completion tokens trained per second of optimizer step (learner), and tokens vLLM generates per "
            "second (all runs).",
            (
                _gauge("tokens_per_second", "trained {{loss}} {{run}}"),
                Query(f"sum(rate(vllm:generation_tokens_total[{RATE}]))", "generated (vLLM)"),
            ),
        ),
        Panel(
            "Policy version",
            "The learner's policy version (optimizer steps taken).",
            (_gauge("policy_version"),),
            kind="stat",
        ),
        Panel(
            "Queue depth",
            "Groups in the run's stream not yet read by the learner, and read but not yet acknowledged (applied, "
            "waiting for a checkpoint). Steady growth of unread: generation outpaces the learner.",
            (_gauge("queue_unread", "unread {{loss}} {{run}}"), _gauge("queue_pending", "pending {{loss}} {{run}}")),
        ),
        Panel(
            "Rollout groups per minute",
            "Groups the rollout workers append to each run's stream.",
            (Query(f'sum by (run) (rate({_series(ROLLOUT_GROUPS)}{{run=~"$run"}}[{RATE}])) * 60', "{{run}}"),),
        ),
        Panel(
            "Mean staleness",
            "Mean staleness (policy versions) of each step's samples when the learner used them.",
            (_gauge("staleness_mean"),),
        ),
    ),
)

STALENESS_PROBE = Dashboard(
    uid="cfpo-staleness-probe",
    title="cfpo / Staleness probe",
    description="How the policy update behaves as data gets staler: per loss (CFPO and GRPO side by side) and per "
    "staleness bucket (policy versions between generation and use).",
    panels=(
        Panel(
            "Clip fraction",
            "Share of tokens outside the trust region on the side the advantage favours, against the behaviour "
            "(sampling) and the proximal policy. For clipped losses the tokens outside the region of the loss's "
            "own anchor get no gradient; CFPO keeps pulling them back instead.",
            _against_anchors("clip_frac"),
            unit="percentunit",
        ),
        Panel(
            "Clip fraction by staleness",
            "The same shares, per staleness bucket of the samples.",
            _against_anchors("clip_frac", "staleness"),
            unit="percentunit",
        ),
        Panel(
            "KL (k3)",
            "KL(anchor || current policy), k3 estimator: how far the update has moved from the "
            "sampling policy (vs behaviour) and from the policy before this batch's first update (vs proximal).",
            _against_anchors("kl_k3"),
        ),
        Panel("KL (k3) by staleness", "The same KLs per staleness bucket.", _against_anchors("kl_k3", "staleness")),
        Panel(
            "KL (k3) by policy lag",
            "The same KLs per policy-lag bucket (the version updated - the one that generated the data).",
            _against_anchors("kl_k3", "lag"),
        ),
        Panel("Total variation", "0.5 x mean |r - 1| over tokens, against each anchor.", _against_anchors("tv")),
        Panel("Total variation by staleness", "The same per staleness bucket.", _against_anchors("tv", "staleness")),
        Panel(
            "Entropy",
            "Mean token entropy of the current policy; a collapse shows as a fall to 0.",
            (_gauge("entropy"),),
        ),
        Panel("Entropy by staleness", "The same per staleness bucket.", (_by_staleness("entropy"),)),
        Panel(
            "Ratio range",
            "Smallest and largest ratio pi / pi_anchor of each step, against each anchor.",
            (*_against_anchors("ratio_min", stat="min "), *_against_anchors("ratio_max", stat="max ")),
        ),
        Panel(
            "Ratio range by staleness",
            "Smallest and largest ratio per staleness bucket, against each anchor.",
            (*_against_anchors("ratio_min", "staleness", "min "), *_against_anchors("ratio_max", "staleness", "max ")),
        ),
        Panel(
            "Effective sample size",
            "(sum w)^2 / (N sum w^2) of the importance weights w = pi / pi_anchor over each optimizer step's N "
            "tokens, against each anchor: 1 on-policy (every weight 1), falling as a few tokens carry the weight. "
            "Its fall with staleness is how many of a stale batch's tokens still inform the update.",
            _against_anchors("ess"),
        ),
        Panel(
            "Staleness of consumed samples",
            "Median and p90 staleness of the samples the learner consumed.",
            (
                Query(_quantile(0.5, LEARNER_STALENESS.name, "run, loss", RUN_LOSS), "p50 {{loss}} {{run}}"),
                Query(_quantile(0.9, LEARNER_STALENESS.name, "run, loss", RUN_LOSS), "p90 {{loss}} {{run}}"),
            ),
        ),
        Panel(
            "Policy loss and gradient norm",
            "The step's policy loss and global gradient norm before clipping.",
            (_gauge("loss", "loss {{loss}} {{run}}"), _gauge("grad_norm", "grad norm {{loss}} {{run}}")),
        ),
    ),
)

SERVICES = Dashboard(
    uid="cfpo-services",
    title="cfpo / Services",
    description="Generation (vLLM's own metrics), reward scoring, rollout stages and weight sync.",
    panels=(
        Panel(
            "Generation throughput",
            "Prompt and generated tokens per second in vLLM.",
            (
                Query(f"sum(rate(vllm:prompt_tokens_total[{RATE}]))", "prompt"),
                Query(f"sum(rate(vllm:generation_tokens_total[{RATE}]))", "generated"),
            ),
        ),
        Panel(
            "Generation latency",
            "p50 and p90 seconds from a request's arrival to its last token (vLLM).",
            (
                Query(_quantile(0.5, "vllm:e2e_request_latency_seconds"), "p50"),
                Query(_quantile(0.9, "vllm:e2e_request_latency_seconds"), "p90"),
            ),
            unit="s",
        ),
        Panel(
            "Generation requests in flight",
            "Requests vLLM is running and holding in its queue.",
            (Query("sum(vllm:num_requests_running)", "running"), Query("sum(vllm:num_requests_waiting)", "waiting")),
        ),
        Panel(
            "Reward latency",
            "p50 and p99 seconds to answer a score request.",
            (
                Query(_reward(lambda p: _quantile(0.5, p + REWARD_REQUEST_SECONDS.name)), "p50"),
                Query(_reward(lambda p: _quantile(0.99, p + REWARD_REQUEST_SECONDS.name)), "p99"),
            ),
            unit="s",
        ),
        Panel(
            "Reward requests and function outcomes",
            "Score requests per second by HTTP status, and reward function calls per second by outcome (ok, error, "
            "timeout).",
            (
                Query(
                    _reward(lambda p: f"sum by (status) (rate({p}{_series(REWARD_REQUESTS)}[{RATE}]))"),
                    "requests {{status}}",
                ),
                Query(
                    _reward(
                        lambda p: f"sum by (function, outcome) (rate({p}{_series(REWARD_FUNCTION_CALLS)}[{RATE}]))"
                    ),
                    "{{function}} {{outcome}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Reward error ratio",
            "Share of reward function calls that ended in error or timeout.",
            (
                Query(
                    _reward(
                        lambda p: (
                            f'(sum(rate({p}{_series(REWARD_FUNCTION_CALLS)}{{outcome!="ok"}}[{RATE}])) '
                            f"or vector(0)) / sum(rate({p}{_series(REWARD_FUNCTION_CALLS)}[{RATE}]))"
                        )
                    ),
                    "error ratio",
                ),
            ),
            unit="percentunit",
        ),
        Panel(
            "Weight sync time",
            "p50 and max seconds to push the learner's weights to generation.",
            (
                Query(_quantile(0.5, LEARNER_WEIGHT_SYNC_SECONDS.name, "run", 'run=~"$run"'), "p50 {{run}}"),
                Query(_quantile(1.0, LEARNER_WEIGHT_SYNC_SECONDS.name, "run", 'run=~"$run"'), "max {{run}}"),
            ),
            unit="s",
        ),
        Panel(
            "Rollout stage time",
            "p90 seconds per group in each rollout stage (generate, score, append).",
            (Query(_quantile(0.9, ROLLOUT_STAGE_SECONDS.name, "run, stage", 'run=~"$run"'), "{{stage}} {{run}}"),),
            unit="s",
        ),
        Panel(
            "Rollout errors",
            "Failed (retried) generation and reward calls per second, by stage.",
            (
                Query(
                    f'sum by (run, stage) (rate({_series(ROLLOUT_ERRORS)}{{run=~"$run"}}[{RATE}])) or vector(0)',
                    "{{stage}} {{run}}",
                ),
            ),
            unit="reqps",
        ),
    ),
)

DASHBOARDS = (RUN_OVERVIEW, STALENESS_PROBE, SERVICES)


def to_grafana(dashboard: Dashboard) -> dict:
    """Grafana's dashboard JSON model, built with grafana-foundation-sdk's typed builders."""
    from grafana_foundation_sdk.builders import dashboard as gd
    from grafana_foundation_sdk.builders import prometheus, stat, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableOption, VariableRefresh, VariableSort

    source = DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)

    def variable(name: str, query: str) -> gd.QueryVariable:
        return (
            gd.QueryVariable(name)
            .label(name)
            .datasource(source)
            .query(query)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(VariableOption(text="All", value="$__all", selected=True))
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
        )

    built = (
        gd.Dashboard(dashboard.title)
        .uid(dashboard.uid)
        .description(dashboard.description)
        .tags(["cfpo"])
        .time("now-1h", "now")
        .refresh("10s")
        .readonly()
        .with_variable(variable("run", f"label_values({VARIABLE_SOURCE}, run)"))
        .with_variable(variable("loss", f'label_values({VARIABLE_SOURCE}{{run=~"$run"}}, loss)'))
    )
    for panel in dashboard.panels:
        builder = (stat.Panel() if panel.kind == "stat" else timeseries.Panel()).title(panel.title)
        builder = builder.description(panel.description).datasource(source).unit(panel.unit).span(12).height(8)
        for ref, query in zip("ABCDEFGH", panel.queries):
            builder = builder.with_target(
                prometheus.Dataquery().expr(query.expr).legend_format(query.legend).ref_id(ref).datasource(source)
            )
        built = built.with_panel(builder)
    return json.loads(json.dumps(built.build(), cls=JSONEncoder))


def render(dashboard: Dashboard) -> str:
    return json.dumps(to_grafana(dashboard), indent=2, sort_keys=True) + "\n"


def write(out_dir: Path) -> list[Path]:
    """Write every dashboard's JSON into ``out_dir``; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for dashboard in DASHBOARDS:
        path = out_dir / dashboard.file_name
        path.write_text(render(dashboard))
        written.append(path)
    return written
