"""Every Prometheus metric of the pipeline, defined once: name, type, help text, labels.

Dashboards, alert rules and tests read these definitions instead of repeating the strings. A service records
through a recorder: ``PrometheusRecorder`` for one process (its own ``/metrics``), or ``RayRecorder`` for
replicas under Ray Serve, where a per-process prometheus-client counter would only count the replica that
happens to answer a scrape. To add a service's metrics, add ``Metric`` constants and a tuple of them below.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from cfpo.config import Anchor

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class Metric:
    name: str  # counters get Prometheus' "_total" suffix on export, and Ray's metrics a "ray_" prefix
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = LATENCY_BUCKETS


# Reward service (services/reward)
REWARD_REQUESTS = Metric("cfpo_reward_requests", "counter", "Score requests answered, by HTTP status.", ("status",))
REWARD_REQUEST_SECONDS = Metric("cfpo_reward_request_seconds", "histogram", "Time to answer a score request.")
REWARD_ITEMS = Metric("cfpo_reward_items", "counter", "Items scored.")
REWARD_FUNCTION_CALLS = Metric(
    "cfpo_reward_function_calls",
    "counter",
    "Reward function calls by outcome: ok, error (raised or its worker died) or timeout (worker killed).",
    ("function", "outcome"),
)
REWARD_METRICS = (REWARD_REQUESTS, REWARD_REQUEST_SECONDS, REWARD_ITEMS, REWARD_FUNCTION_CALLS)


class Recorder(Protocol):
    content_type: str

    def inc(self, metric: Metric, amount: float = 1.0, **labels: str) -> None: ...

    def observe(self, metric: Metric, value: float, **labels: str) -> None: ...

    async def exposition(self) -> bytes: ...


class PrometheusRecorder:
    """One process's metrics in its own registry, exposed as Prometheus text by that process."""

    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self, metrics: tuple[Metric, ...]):
        import prometheus_client as prom

        self._registry = prom.CollectorRegistry()
        self._metrics = {}
        for m in metrics:
            made: prom.Counter | prom.Gauge | prom.Histogram
            if m.kind == "counter":
                made = prom.Counter(m.name, m.help, m.labels, registry=self._registry)
            elif m.kind == "gauge":
                made = prom.Gauge(m.name, m.help, m.labels, registry=self._registry)
            else:
                made = prom.Histogram(m.name, m.help, m.labels, buckets=m.buckets, registry=self._registry)
            self._metrics[m.name] = made
        self._label_names = {m.name: tuple(m.labels) for m in metrics}
        self._series: dict[str, set[tuple[str, ...]]] = {name: set() for name in self._metrics}
        self._lock = threading.Lock()

    def _child(self, metric: Metric, labels: dict[str, str]):
        made = self._metrics[metric.name]
        if not labels:
            return made
        with self._lock:
            self._series[metric.name].add(tuple(labels[name] for name in metric.labels))
        return made.labels(**labels)

    def forget_run(self, run: str) -> int:
        """Remove every series labelled ``run``: a long-lived worker would otherwise export each run it ever
        trained until it restarts. Returns how many went."""
        removed = 0
        with self._lock:
            for name, series in self._series.items():
                labels = self._label_names[name]
                if "run" not in labels:
                    continue
                for values in [v for v in series if v[labels.index("run")] == run]:
                    self._metrics[name].remove(*values)
                    series.discard(values)
                    removed += 1
        return removed

    def inc(self, metric: Metric, amount: float = 1.0, **labels: str) -> None:
        self._child(metric, labels).inc(amount)

    def observe(self, metric: Metric, value: float, **labels: str) -> None:
        self._child(metric, labels).observe(value)

    def set(self, metric: Metric, value: float, **labels: str) -> None:
        self._child(metric, labels).set(value)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose /metrics on its own port, for processes that run no web app (learner, rollout workers)."""
        from prometheus_client import start_http_server

        start_http_server(port, addr=host, registry=self._registry)

    async def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self._registry)


def forget_run_later(recorder: PrometheusRecorder, run: str, after_s: float) -> None:
    """Remove ``run``'s series once the scrapes after its end have had time to take its last values."""
    timer = threading.Timer(after_s, recorder.forget_run, args=(run,))
    timer.daemon = True
    timer.start()


class RayRecorder:
    """Replica metrics through Ray's metrics agent, which exports every replica's series of a node together.

    ``exposition`` returns this node's agent's export of these metrics (names prefixed ``ray_``, one series per
    replica process, told apart by the ``WorkerId`` label): complete for a one-node Ray; on a multi-node
    cluster scrape every node's agent instead. The agent publishes what replicas report every
    ``metrics_report_interval_ms`` (Ray's default: 10 s), so recent requests show up after that delay.
    """

    content_type = PrometheusRecorder.content_type

    def __init__(self, metrics: tuple[Metric, ...]):
        import ray
        from ray.util import metrics as ray_metrics

        self._metrics: dict[str, Any] = {}  # Counter or Histogram: callers inc() counters and observe() histograms
        for m in metrics:
            made: ray_metrics.Counter | ray_metrics.Histogram
            if m.kind == "counter":
                made = ray_metrics.Counter(m.name, m.help, m.labels)
            else:
                made = ray_metrics.Histogram(m.name, m.help, list(m.buckets), m.labels)
            self._metrics[m.name] = made
        node_id = ray.get_runtime_context().get_node_id()
        node = next(n for n in ray.nodes() if n["NodeID"] == node_id)
        self._agent_url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        self._prefixes = tuple(f"ray_{m.name}" for m in metrics)

    def inc(self, metric: Metric, amount: float = 1.0, **labels: str) -> None:
        self._metrics[metric.name].inc(amount, tags=labels or None)

    def observe(self, metric: Metric, value: float, **labels: str) -> None:
        self._metrics[metric.name].observe(value, tags=labels or None)

    async def exposition(self) -> bytes:
        import httpx

        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(self._agent_url)
        response.raise_for_status()
        return "".join(line for line in response.text.splitlines(keepends=True) if self._ours(line)).encode()

    def _ours(self, line: str) -> bool:
        words = line.split(" ", 3)
        name = words[2] if line.startswith("#") and len(words) > 2 else line  # "# HELP name ..." or a sample
        return name.startswith(self._prefixes)


# Rollout workers (services/rollout)
ROLLOUT_GROUPS = Metric("cfpo_rollout_groups", "counter", "Groups appended to the run's stream.", ("run",))
ROLLOUT_ZERO_VARIANCE = Metric(
    "cfpo_rollout_zero_variance_groups",
    "counter",
    "Groups whose rewards were all equal, by what happened to them.",
    ("run", "action"),
)
ROLLOUT_ERRORS = Metric(
    "cfpo_rollout_errors",
    "counter",
    "Failed calls (retried) and groups made again, by stage: generate, reward, "
    "foreign_weights (another run's weights made them), staleness_bound (versions outside the run's bound).",
    ("run", "stage"),
)
ROLLOUT_STAGE_SECONDS = Metric(
    "cfpo_rollout_stage_seconds",
    "histogram",
    "Seconds per group spent in each stage.",
    ("run", "stage"),
)
ROLLOUT_METRICS = (ROLLOUT_GROUPS, ROLLOUT_ZERO_VARIANCE, ROLLOUT_ERRORS, ROLLOUT_STAGE_SECONDS)

# Learner (trainer/training.py): one gauge per step metric, labelled by run and loss.
# The trust region's anchor: the policy a ratio is taken against. The loss uses one (LossConfig.ratio_reference);
# every step logs these metrics against both, as ``<anchor>_<metric>``, so rows of runs that differ in the anchor
# compare like with like.
ANCHORS = dict(
    zip(
        get_args(Anchor),
        (
            "the sampling policy (vLLM's log-probs of the generated tokens)",
            "the learner's policy before its first update on the batch",
        ),
        strict=True,
    )
)
TRUST_REGION_VALUES = {
    "clip_frac": "Share of tokens outside the trust region on the side the advantage favours (for CFPO: would clip).",
    "clip_frac_low": "Share of tokens with r < 1 - eps and A < 0.",
    "clip_frac_high": "Share of tokens with r > 1 + eps_high and A > 0.",
    "ratio_mean": "Mean ratio pi/pi_anchor over tokens.",
    "ratio_min": "Smallest ratio pi/pi_anchor.",
    "ratio_max": "Largest ratio pi/pi_anchor.",
    "tv": "Total variation estimate 0.5 * mean |r - 1|.",
    "kl_k1": "KL(anchor || current), k1 estimator.",
    "kl_k3": "KL(anchor || current), k3 estimator.",
    "ess": "Effective sample size (sum r)^2 / (N sum r^2) of the ratios as importance weights over the step's N "
    "tokens (1: all equal; 1/N: one token carries all).",
}


def anchored(anchor: str, key: str) -> str:
    """The step-metric key of trust-region metric ``key`` measured against ``anchor``: ``behaviour_kl_k3``."""
    return f"{anchor}_{key}"


LEARNER_STEP_VALUES = {
    **{
        anchored(anchor, key): f"{text[:-1]}, against {where}."
        for anchor, where in ANCHORS.items()
        for key, text in TRUST_REGION_VALUES.items()
    },
    "entropy": "Mean token entropy of the current policy.",
    "adv_mean": "Mean advantage over the step's responses.",
    "adv_std": "Standard deviation of the advantages over the step's responses.",
    "loss": "Policy loss of the step.",
    "grad_norm": "Global gradient norm before clipping.",
    "lr": "Learning rate.",
    "reward_mean": "Mean reward of the step's samples.",
    "reward_std": "Standard deviation of the step's rewards.",
    "response_length": "Mean completion length in tokens.",
    "step_seconds": "Seconds of the optimizer step.",
    "data_wait_seconds": "Seconds the learner spent getting the step's rollout groups: waiting for rollout workers, "
    "then reading and decoding the groups from the stream.",
    "tokens_per_second": "Completion tokens trained per second of optimizer step.",
    "staleness_mean": "Mean staleness of the step's samples (learner version at consumption - generating version).",
    "policy_lag": "Policy lag of the optimizer step: the version it updates - the oldest version that generated its "
    "data (staleness at the step's first update, then one more per update on the same batch).",
    "bound_violations": "Groups of the step made by policy versions its staleness bound does not allow for their "
    "slot (rollout workers make such groups again, so this stays 0).",
    "policy_version": "Learner policy version (optimizer steps).",
    "queue_unread": "Groups in the stream not yet read by the learner.",
    "queue_pending": "Groups read but not yet acknowledged (applied, awaiting a checkpoint).",
    "dead_letters": "Malformed groups set aside over the run.",
}
LEARNER_GAUGES = {
    key: Metric(f"cfpo_learner_{key}", "gauge", text, ("run", "loss")) for key, text in LEARNER_STEP_VALUES.items()
}
# the step metrics also logged per bucket of staleness and of policy lag, as ``<metric>/<age>_<bucket>``
AGES = ("staleness", "lag")  # versions between generation and the step: at consumption (fixed), and now (grows)
BUCKETED_STEP_VALUES = (
    *(anchored(anchor, key) for anchor in ANCHORS for key in ("clip_frac", "kl_k3", "tv", "ratio_min", "ratio_max")),
    "entropy",
)
LEARNER_BUCKET_GAUGES = {
    key: Metric(
        f"cfpo_learner_{key}_by_staleness",
        "gauge",
        f"{LEARNER_STEP_VALUES[key]} By staleness bucket.",
        ("run", "loss", "staleness_bucket"),
    )
    for key in BUCKETED_STEP_VALUES
}
LEARNER_LAG_BUCKET_GAUGES = {
    key: Metric(
        f"cfpo_learner_{key}_by_lag",
        "gauge",
        f"{LEARNER_STEP_VALUES[key]} By policy-lag bucket.",
        ("run", "loss", "lag_bucket"),
    )
    for key in LEARNER_BUCKET_GAUGES
}


def bucket_key(metric: str, age: str, bucket: str) -> str:
    """The step row's key of ``metric`` over the samples in one bucket of ``age``."""
    return f"{metric}/{age}_{bucket}"


def split_bucket_key(key: str) -> tuple[str, str, str] | None:
    """(metric, age, bucket) of a ``bucket_key``, or None for any other key."""
    metric, slash, rest = key.partition("/")
    age, underscore, bucket = rest.partition("_")
    return (metric, age, bucket) if slash and underscore and age in AGES and bucket else None


LEARNER_STEPS = Metric("cfpo_learner_optimizer_steps", "counter", "Optimizer steps taken.", ("run", "loss"))
LEARNER_STALENESS = Metric(
    "cfpo_learner_staleness",
    "histogram",
    "Staleness of consumed samples, in policy versions.",
    ("run", "loss"),
    buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
)
LEARNER_WEIGHT_SYNC_SECONDS = Metric(
    "cfpo_learner_weight_sync_seconds",
    "histogram",
    "Seconds to push weights to generation.",
    ("run",),
)
LEARNER_EVAL_ACCURACY = Metric(
    "cfpo_learner_eval_accuracy",
    "gauge",
    "Held-out accuracy of the latest evaluation (share solved, greedy).",
    ("run", "loss"),
)
LEARNER_EVAL_MEAN_REWARD = Metric(
    "cfpo_learner_eval_mean_reward",
    "gauge",
    "Held-out mean reward of the latest evaluation.",
    ("run", "loss"),
)
LEARNER_METRICS = (
    *LEARNER_GAUGES.values(),
    *LEARNER_BUCKET_GAUGES.values(),
    *LEARNER_LAG_BUCKET_GAUGES.values(),
    LEARNER_STEPS,
    LEARNER_STALENESS,
    LEARNER_WEIGHT_SYNC_SECONDS,
    LEARNER_EVAL_ACCURACY,
    LEARNER_EVAL_MEAN_REWARD,
)

# Control API (services/control)
CONTROL_REQUESTS = Metric(
    "cfpo_control_requests",
    "counter",
    "API requests answered, by method, route template and HTTP status.",
    ("method", "route", "status"),
)
CONTROL_RUNS_SUBMITTED = Metric("cfpo_control_runs_submitted", "counter", "Runs validated and queued.")
CONTROL_RUNS_REAPED = Metric(
    "cfpo_control_runs_reaped",
    "counter",
    "Running runs whose worker stopped heartbeating, by outcome: requeued (to be resumed), failed (out of restarts), "
    "cancelled (a cancel was asked).",
    ("outcome",),
)
CONTROL_RUNS_QUEUED = Metric("cfpo_control_runs_queued", "gauge", "Runs waiting for a worker, at the last scrape.")
CONTROL_RUNS_RUNNING = Metric("cfpo_control_runs_running", "gauge", "Runs held by a worker, at the last scrape.")
CONTROL_METRICS = (
    CONTROL_REQUESTS,
    CONTROL_RUNS_SUBMITTED,
    CONTROL_RUNS_REAPED,
    CONTROL_RUNS_QUEUED,
    CONTROL_RUNS_RUNNING,
)
