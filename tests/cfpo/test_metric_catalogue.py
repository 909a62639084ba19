"""The metric catalogue (docs/metrics.md) lists every metric cfpo/metrics.py defines, so users can trust it."""

from cfpo import metrics
from tests import REPO_ROOT

METRICS_DOC = (REPO_ROOT / "docs/metrics.md").read_text()
CATALOGUE = METRICS_DOC[METRICS_DOC.index("## Metric catalogue") :]


def test_every_metric_and_learner_key_is_in_the_catalogue():
    defined = [value for value in vars(metrics).values() if isinstance(value, metrics.Metric)]
    missing = [m.name for m in defined if f"`{m.name}{'_total' if m.kind == 'counter' else ''}`" not in CATALOGUE]
    missing += [key for key in metrics.LEARNER_STEP_VALUES if f"| `{key}` |" not in CATALOGUE]
    by_staleness = next(line for line in CATALOGUE.splitlines() if "`cfpo_learner_<key>_by_staleness`" in line)
    missing += [f"{key}_by_staleness" for key in metrics.LEARNER_BUCKET_GAUGES if f"`{key}`" not in by_staleness]
    assert not missing, f"add to the metric catalogue in docs/metrics.md: {missing}"
