import pickle

import pytest
import torch

from cfpo.config import LossConfig
from tests.trainer.test_losses import _random_batch
from trainer.learner import merge_metrics
from trainer.losses import policy_loss, trust_region_metrics
from trainer.pooled import Pooled


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


def test_pooled_values_are_their_statistics_and_merge_as_all_values_at_once():
    values = torch.tensor([1.0, 2.0, 4.0, 9.0])
    assert Pooled.of("mean", values) == 4.0
    assert Pooled.of("std", values) == pytest.approx(float(values.std(unbiased=False)))
    assert Pooled.of("ess", values) == pytest.approx(16**2 / (4 * 102))  # (sum w)^2 / (N sum w^2)
    for statistic in ("mean", "std", "ess"):
        merged = Pooled.merge([Pooled.of(statistic, values[:1]), Pooled.of(statistic, values[1:])])
        assert merged == pytest.approx(Pooled.of(statistic, values))
    nothing = torch.tensor([])
    assert (Pooled.of("mean", nothing), Pooled.of("std", nothing), Pooled.of("ess", nothing)) == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="^parts:"):
        Pooled.merge([Pooled.of("mean", values), Pooled.of("std", values)])


def test_uneven_micro_batches_merge_to_the_whole_steps_metrics():
    # Responses of different lengths in micro-batches of 1, 2 and 5 responses and one without tokens, gathered as
    # pickles (as ranks do). A token-weighted mean of the micro-batches' values is not the step's adv_mean (a mean
    # over responses), adv_std or ESS; the merge from their sums is, like every token mean and extreme.
    logprobs, old, adv, mask = _random_batch(seed=7, B=8, T=9, spread=0.8)
    config = LossConfig(name="cfpo")

    def metrics(rows, mask):
        _, batch = policy_loss(config, logprobs[rows], old[rows], adv[rows], mask[rows])
        return {**batch, **trust_region_metrics(config, logprobs[rows], old[rows], adv[rows], mask[rows])}

    whole = metrics(slice(None), mask)
    chunks = (slice(0, 1), slice(1, 3), slice(3, 8))
    parts = [(metrics(rows, mask), float(mask[rows].sum())) for rows in chunks]
    parts.append((metrics(slice(0, 1), torch.zeros_like(mask)), 0.0))
    merged = merge_metrics(pickle.loads(pickle.dumps(parts)))
    assert merged == pytest.approx(whole)
    for key in ("adv_mean", "adv_std", "ess"):
        token_weighted = sum(m[key] * tokens for m, tokens in parts) / sum(tokens for _, tokens in parts)
        assert token_weighted != pytest.approx(whole[key], rel=1e-3), key  # the example tells the two apart
