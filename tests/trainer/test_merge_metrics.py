import pytest

from trainer.learner import merge_metrics


def test_extremes_stay_extremes_and_means_weight_by_tokens():
    parts = [
        ({"ratio_min": 0.9, "ratio_max": 1.1, "clip_frac": 0.5}, 10.0),
        ({"ratio_min": 0.7, "ratio_max": 1.05, "clip_frac": 0.0}, 30.0),
    ]
    merged = merge_metrics(parts)
    assert merged["ratio_min"] == 0.7 and merged["ratio_max"] == 1.1
    assert merged["clip_frac"] == pytest.approx(0.125)


def test_micro_batches_without_tokens_do_not_count():
    parts = [({"ratio_min": 1.0, "kl_k3": 0.0}, 0.0), ({"ratio_min": 0.5, "kl_k3": 0.2}, 4.0)]
    assert merge_metrics(parts) == {"ratio_min": 0.5, "kl_k3": pytest.approx(0.2)}
