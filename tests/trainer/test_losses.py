"""The loss library against expectations derived by hand from the objectives, not read off the code."""

import math

import pytest
import torch
from pydantic import ValidationError

from cfpo.config import LossConfig, describe_validation_error
from trainer.losses import LOSSES, aggregate, policy_loss, trust_region_metrics

RATIO_LOSSES = ["cfpo", "grpo", "dapo", "gspo", "cispo"]
CONFIG_FIELDS = set(LossConfig.model_fields)


def _loss(name, logprobs, old, adv, mask, **options):
    """``policy_loss`` with the LossConfig of ``name`` and of the config fields among ``options``."""
    config = LossConfig(name=name, **{k: v for k, v in options.items() if k in CONFIG_FIELDS})
    return policy_loss(config, logprobs, old, adv, mask, **{k: v for k, v in options.items() if k not in CONFIG_FIELDS})


def _region(name, logprobs, anchor, adv, mask):
    return trust_region_metrics(LossConfig(name=name), logprobs, anchor, adv, mask)


def _random_batch(seed=0, B=5, T=7, spread=0.3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=dtype) * 3 - 0.05
    logprobs = (old + torch.randn(B, T, generator=g, dtype=dtype) * spread).requires_grad_()
    adv = torch.randn(B, generator=g, dtype=dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return logprobs, old, adv, mask


def _seq_mean_token_mean(values, mask):
    per_response = [values[i][mask[i]].mean() for i in range(values.shape[0]) if mask[i].any()]
    return torch.stack(per_response).mean()


def _grad(loss, leaf):
    (grad,) = torch.autograd.grad(loss, leaf)
    return grad


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradient_at_ratio_one_is_the_policy_gradient(name):
    # d/dlogp of r*A at r = 1 is A: every loss starts as -A * grad log p, weighted by the aggregation
    # (here 1 / (responses * own length) per token).
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.5, -9.0]], dtype=torch.float64)
    logprobs = old.clone().requires_grad_()
    adv = torch.tensor([0.7, -1.3], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    loss, _ = _loss(name, logprobs, old, adv, mask)
    expected = torch.tensor([[-0.7 / 6, -0.7 / 6, -0.7 / 6], [1.3 / 4, 1.3 / 4, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(_grad(loss, logprobs), expected)


@pytest.mark.parametrize(
    "adv, eps, eps_high, optimum",
    [
        (1.0, 0.2, None, 1.2),
        (-1.0, 0.2, None, 0.8),
        (2.5, 0.1, None, 1.1),
        (-0.4, 0.3, None, 0.7),
        (1.0, 0.2, 0.28, 1.28),
        (-1.0, 0.2, 0.28, 0.8),
    ],
)
def test_cfpo_surrogate_is_maximised_at_the_trust_region_edge(adv, eps, eps_high, optimum):
    ratios = torch.linspace(0.5, 1.5, 10001, dtype=torch.float64)
    logprobs = torch.log(ratios)[:, None]
    old = torch.zeros_like(logprobs)
    advs = torch.full((len(ratios),), adv, dtype=torch.float64)
    mask = torch.ones_like(logprobs, dtype=torch.bool)
    surrogates = torch.stack(
        [
            -_loss(
                "cfpo",
                logprobs[i : i + 1],
                old[i : i + 1],
                advs[i : i + 1],
                mask[i : i + 1],
                eps=eps,
                eps_high=eps_high,
            )[0]
            for i in range(len(ratios))
        ]
    )
    assert ratios[surrogates.argmax()].item() == pytest.approx(optimum, abs=1e-4)
    at_optimum = torch.tensor([[math.log(optimum)]], dtype=torch.float64, requires_grad=True)
    loss, _ = _loss("cfpo", at_optimum, old[:1], advs[:1], mask[:1], eps=eps, eps_high=eps_high)
    assert abs(_grad(loss, at_optimum).item()) < 1e-12


@pytest.mark.parametrize("adv, ratio", [(1.0, 1.5), (1.0, 3.0), (-1.0, 0.5), (-2.0, 0.1)])
def test_past_the_edge_cfpo_pulls_back_and_grpo_is_flat(adv, ratio):
    old = torch.zeros(1, 1, dtype=torch.float64)
    mask = torch.ones(1, 1, dtype=torch.bool)
    advs = torch.tensor([adv], dtype=torch.float64)
    grads = {}
    for name in ("cfpo", "grpo"):
        logprobs = torch.full((1, 1), math.log(ratio), dtype=torch.float64, requires_grad=True)
        loss, _ = _loss(name, logprobs, old, advs, mask)
        grads[name] = _grad(loss, logprobs).item()
    assert grads["grpo"] == 0.0
    # A gradient-descent step moves logp by -grad: towards 1 + sign(A) eps, i.e. down when the ratio ran high.
    r_star = 1 + math.copysign(0.2, adv)
    assert math.copysign(1, -grads["cfpo"]) == math.copysign(1, r_star - ratio)
    # Exact value: d/dlogp [-(rA - |A|/(2 eps)(r-1)^2)] = -r (A - |A|/eps (r-1)).
    assert grads["cfpo"] == pytest.approx(-ratio * (adv - abs(adv) / 0.2 * (ratio - 1)))


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
def test_on_policy_cfpo_equals_grpo(agg):
    logprobs, _, adv, mask = _random_batch(seed=3)
    old = logprobs.detach().clone()
    results = {}
    for name in ("cfpo", "grpo"):
        loss, metrics = _loss(name, logprobs, old, adv, mask, agg=agg, norm_length=7)
        results[name] = (loss.detach(), _grad(loss, logprobs), metrics)
    torch.testing.assert_close(results["cfpo"][0], results["grpo"][0])
    torch.testing.assert_close(results["cfpo"][1], results["grpo"][1])
    assert results["cfpo"][2] == results["grpo"][2]
    assert _region("cfpo", logprobs, old, adv, mask)["clip_frac"] == 0.0


def test_aggregation_modes_on_a_hand_computed_example():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 100.0, 100.0, 100.0], [100.0] * 4])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    # Per response: means 2 and 4 (the empty third response is skipped) -> 3.
    assert aggregate(values, mask, "seq-mean-token-mean").item() == pytest.approx(3.0)
    # All tokens: (1+2+3+4)/4.
    assert aggregate(values, mask, "token-mean").item() == pytest.approx(2.5)
    # Dr.GRPO: sums 6 and 4 over the constant, mean over the 3 responses; the constant is never the width.
    assert aggregate(values, mask, "seq-mean-token-sum-norm", norm_length=4).item() == pytest.approx(10 / 12)
    assert aggregate(values, mask, "seq-mean-token-sum-norm", norm_length=10).item() == pytest.approx(10 / 30)
    with pytest.raises(ValueError, match="^norm_length: required"):
        aggregate(values, mask, "seq-mean-token-sum-norm")


def test_a_shared_normaliser_makes_micro_batches_add_up_to_the_batch():
    # Micro-batches {4 tokens of value 1} and {1 token of value 3}: the token mean of the batch is 7/5 = 1.4.
    # Each micro-batch divided by its own count gives 1 and 3 (mean 2.0); divided by the batch's count over the
    # number of micro-batches, their mean is the batch's.
    first, second = torch.ones(1, 4), torch.full((1, 4), 3.0)
    first_mask = torch.ones(1, 4, dtype=torch.bool)
    second_mask = torch.tensor([[True, False, False, False]])
    own = (aggregate(first, first_mask, "token-mean") + aggregate(second, second_mask, "token-mean")) / 2
    assert own.item() == pytest.approx(2.0)
    shared = 5 / 2
    total = (
        aggregate(first, first_mask, "token-mean", normaliser=shared)
        + aggregate(second, second_mask, "token-mean", normaliser=shared)
    ) / 2
    assert total.item() == pytest.approx(1.4)


def test_aggregation_reaches_policy_loss():
    # reinforce: per-token loss -A logp. Response 0: A=1, logp -1,-3 ; response 1: A=-2, logp -2.
    logprobs = torch.tensor([[-1.0, -3.0], [-2.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([1.0, -2.0])
    token_loss = {
        "seq-mean-token-mean": (2.0 + -4.0) / 2,
        "token-mean": (1 + 3 - 4) / 3,
        "seq-mean-token-sum-norm": (4.0 - 4.0) / 4,
    }
    for agg, expected in token_loss.items():
        loss, _ = _loss("reinforce", logprobs, logprobs, adv, mask, agg=agg, norm_length=2)
        assert loss.item() == pytest.approx(expected), agg


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "token-mean"])
def test_padding_changes_nothing(name, agg):
    logprobs, old, adv, mask = _random_batch(seed=5)
    loss, metrics = _loss(name, logprobs, old, adv, mask, agg=agg)
    grad = _grad(loss, logprobs)

    pad = 4
    garbage = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30], dtype=torch.float64)
    padded_lp = torch.cat([logprobs.detach(), garbage.expand(logprobs.shape[0], pad)], 1).requires_grad_()
    padded_old = torch.cat([old, garbage.flip(0).expand(old.shape[0], pad)], 1)
    padded_mask = torch.cat([mask, torch.zeros(mask.shape[0], pad, dtype=torch.bool)], 1)
    padded_loss, padded_metrics = _loss(name, padded_lp, padded_old, adv, padded_mask, agg=agg)
    padded_grad = _grad(padded_loss, padded_lp)

    torch.testing.assert_close(padded_loss, loss)
    torch.testing.assert_close(padded_grad[:, : logprobs.shape[1]], grad)
    assert torch.all(padded_grad[:, logprobs.shape[1] :] == 0)
    assert padded_metrics == pytest.approx(metrics)


@pytest.mark.parametrize("name", list(LOSSES))
def test_extreme_log_ratios_stay_finite(name):
    deltas = torch.linspace(-50, 50, 101)
    old = torch.full((101, 1), -3.0)
    logprobs = (old + deltas[:, None]).requires_grad_()
    adv = torch.where(torch.arange(101) % 2 == 0, 1.0, -1.0)
    mask = torch.ones(101, 1, dtype=torch.bool)
    loss, metrics = _loss(name, logprobs, old, adv, mask, beta=0.1, ref_logprobs=old - 50)
    assert torch.isfinite(loss)
    assert torch.all(torch.isfinite(_grad(loss, logprobs)))
    assert all(math.isfinite(v) for v in metrics.values()), metrics


def test_cfpo_and_grpo_match_their_closed_forms_on_random_inputs():
    logprobs, old, adv, mask = _random_batch(seed=11, B=16, T=12, spread=0.4, dtype=torch.float32)
    eps = 0.2
    r = torch.exp(logprobs.detach() - old)
    A = adv[:, None].expand_as(r)
    cfpo_surrogate = r * A - A.abs() / (2 * eps) * (r - 1) ** 2
    grpo_surrogate = torch.minimum(r * A, r.clamp(1 - eps, 1 + eps) * A)

    cfpo_loss, _ = _loss("cfpo", logprobs, old, adv, mask)
    grpo_loss, _ = _loss("grpo", logprobs, old, adv, mask)
    assert cfpo_loss.item() == pytest.approx(-_seq_mean_token_mean(cfpo_surrogate, mask).item(), abs=1e-6)
    assert grpo_loss.item() == pytest.approx(-_seq_mean_token_mean(grpo_surrogate, mask).item(), abs=1e-6)

    would_clip = ((r > 1 + eps) & (A > 0)) | ((r < 1 - eps) & (A < 0))
    expected_frac = would_clip[mask].float().mean().item()
    assert 0.05 < expected_frac < 0.95  # the example exercises both outcomes
    cfpo_metrics = _region("cfpo", logprobs, old, adv, mask)
    grpo_metrics = _region("grpo", logprobs, old, adv, mask)
    assert cfpo_metrics["clip_frac"] == pytest.approx(expected_frac)
    assert grpo_metrics["clip_frac"] == pytest.approx(expected_frac)
    assert cfpo_metrics["clip_frac_high"] == pytest.approx(((r > 1 + eps) & (A > 0))[mask].float().mean().item())


def test_cispo_weight_has_no_lower_bound_unless_asked():
    # One token at r = pi/mu = 0.5 with A = +1: CISPO's loss is -sg(w) A log pi, so dLoss/dlog pi = -w. Its paper
    # clips w above only (at 1 + eps_high), so w = 0.5; with cispo_eps_low = 0.2 the weight is floored at 0.8.
    old = torch.tensor([[math.log(0.4)]], dtype=torch.float64)
    mask = torch.ones(1, 1, dtype=torch.bool)
    adv = torch.tensor([1.0], dtype=torch.float64)
    for cispo_eps_low, weight in ((None, 0.5), (0.2, 0.8)):
        logprobs = torch.tensor([[math.log(0.2)]], dtype=torch.float64, requires_grad=True)
        loss, _ = _loss("cispo", logprobs, old, adv, mask, cispo_eps_low=cispo_eps_low)
        assert _grad(loss, logprobs).item() == pytest.approx(-weight)


def test_ratio_kl_and_advantage_metrics_by_hand():
    old = torch.zeros(2, 2)
    logprobs = torch.log(torch.tensor([[2.0, 0.5], [1.0, 9.0]]))
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([1.0, -3.0])
    entropy = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    _, batch = _loss("cfpo", logprobs, old, adv, mask, entropy=entropy)
    m = {**batch, **_region("cfpo", logprobs, old, adv, mask)}
    ratios = [2.0, 0.5, 1.0]
    assert m["ratio_mean"] == pytest.approx(sum(ratios) / 3)
    assert (m["ratio_min"], m["ratio_max"]) == pytest.approx((0.5, 2.0))
    assert m["tv"] == pytest.approx(0.5 * (1.0 + 0.5 + 0.0) / 3)
    assert m["kl_k1"] == pytest.approx(-sum(math.log(r) for r in ratios) / 3)
    assert m["kl_k3"] == pytest.approx(sum(r - 1 - math.log(r) for r in ratios) / 3)
    assert (m["adv_mean"], m["adv_std"]) == pytest.approx((-1.0, 2.0))
    assert m["ess"] == pytest.approx((2.0 + 0.5 + 1.0) ** 2 / (3 * (4.0 + 0.25 + 1.0)))  # (sum r)^2 / (N sum r^2)
    assert m["entropy"] == pytest.approx(2.0)
    # Only token 0 (r=2 > 1.2 with A>0) would be clipped; r=0.5 has A>0 so it is not.
    assert (m["clip_frac"], m["clip_frac_high"], m["clip_frac_low"]) == pytest.approx((1 / 3, 1 / 3, 0.0))


def test_ess_is_one_on_policy_and_falls_as_the_ratios_spread():
    logprobs, _, adv, mask = _random_batch(seed=4)
    assert _region("cfpo", logprobs, logprobs.detach(), adv, mask)["ess"] == 1.0
    # the same noise, scaled: r = exp(spread * z), whose ESS falls as the spread grows
    ess = [_region("cfpo", *_random_batch(seed=4, spread=spread))["ess"] for spread in (0.1, 0.5, 1.5)]
    assert 1.0 > ess[0] > ess[1] > ess[2] > 0.0, ess


def test_dppo_tv_masks_on_the_probability_shift_on_the_side_the_advantage_favours():
    # One token per response, eps 0.2. DPPO's region is on the sampled token's probability: a token leaves the
    # gradient once pi - pi_old > 0.2 with A > 0, or < -0.2 with A < 0, whatever its ratio. A kept token's
    # dLoss/dlog pi is -A min(r, 20) over the 7 responses (the ratio is a detached, truncated weight).
    cases = [  # (pi_old, pi, A, kept)
        (0.3, 0.6, 1.0, False),  # rose past the region, the way A pushes: masked
        (0.6, 0.3, 1.0, True),  # fell as far, against A: kept, A pulls it back
        (0.6, 0.3, -1.0, False),  # fell past the region, the way A pushes: masked
        (0.3, 0.6, -1.0, True),  # rose against A: kept
        (0.01, 0.05, 1.0, True),  # ratio 5 (a ratio clip masks it), probability up 0.04: kept
        (0.5, 0.55, -1.0, True),  # inside the region
        (0.001, 0.1, 1.0, True),  # ratio 100, up 0.099: kept, its weight truncated at 20
    ]
    old = torch.log(torch.tensor([[c[0]] for c in cases], dtype=torch.float64))
    logprobs = torch.log(torch.tensor([[c[1]] for c in cases], dtype=torch.float64)).requires_grad_()
    adv = torch.tensor([c[2] for c in cases], dtype=torch.float64)
    mask = torch.ones(len(cases), 1, dtype=torch.bool)
    loss, _ = _loss("dppo_tv", logprobs, old, adv, mask)
    expected = [-a * min(pi / pi_old, 20.0) / len(cases) if kept else 0.0 for pi_old, pi, a, kept in cases]
    torch.testing.assert_close(_grad(loss, logprobs)[:, 0], torch.tensor(expected, dtype=torch.float64))
    region = _region("dppo_tv", logprobs, old, adv, mask)  # the clip metrics count the masked tokens
    assert (region["clip_frac"], region["clip_frac_high"], region["clip_frac_low"]) == pytest.approx(
        (2 / 7, 1 / 7, 1 / 7)
    )


def test_dapo_clips_higher_than_grpo():
    old = torch.zeros(1, 1)
    mask = torch.ones(1, 1, dtype=torch.bool)
    adv = torch.tensor([1.0])
    grads = {}
    for name in ("grpo", "dapo"):
        logprobs = torch.full((1, 1), math.log(1.25), requires_grad=True)
        loss, _ = _loss(name, logprobs, old, adv, mask)
        grads[name] = _grad(loss, logprobs).item()
        assert _region(name, logprobs, old, adv, mask)["clip_frac"] == (1.0 if name == "grpo" else 0.0)
    assert grads["grpo"] == 0.0
    assert grads["dapo"] == pytest.approx(-1.25)


def test_gspo_clips_whole_responses_on_the_sequence_ratio():
    old = torch.zeros(2, 2)
    # Response 0: log-ratios 0.5 and -0.1 -> sequence ratio exp(0.2) > 1.2: the whole response is clipped.
    logprobs = torch.tensor([[0.5, -0.1], [0.05, -0.05]], requires_grad=True)
    mask = torch.ones(2, 2, dtype=torch.bool)
    loss, _ = _loss("gspo", logprobs, old, torch.tensor([1.0, 1.0]), mask)
    grad = _grad(loss, logprobs)
    assert torch.all(grad[0] == 0)
    torch.testing.assert_close(grad[1], torch.full((2,), -1.0 / 4))  # s = exp(0) = 1, weight 1/(2*2)
    assert _region("gspo", logprobs, old, torch.tensor([1.0, 1.0]), mask)["clip_frac"] == pytest.approx(0.5)


def test_reference_kl_term_is_added_per_token():
    logprobs = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    adv = torch.zeros(1)
    k3 = [math.exp(d) - d - 1 for d in (-0.5, 1.0)]  # d = ref - logp
    loss, metrics = _loss("cfpo", logprobs, logprobs, adv, mask, ref_logprobs=ref, beta=0.1)
    assert loss.item() == pytest.approx(0.1 * sum(k3) / 2)
    assert metrics["ref_kl"] == pytest.approx(sum(k3) / 2)
    loss_k1, _ = _loss("cfpo", logprobs, logprobs, adv, mask, ref_logprobs=ref, beta=0.1, kl_estimator="k1")
    assert loss_k1.item() == pytest.approx(0.1 * (0.5 - 1.0) / 2)


def test_truncated_importance_weight_scales_each_token():
    # On the proximal policy (ratio 1) the loss is -A * w, w = min(pi_prox / pi_behaviour, cap), detached.
    prox = torch.tensor([[-1.0, -1.0]])
    behaviour = torch.tensor([[-1.0 - math.log(1.5), -1.0 - math.log(4.0)]])
    logprobs = prox.clone().requires_grad_()
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, metrics = _loss("cfpo", logprobs, prox, torch.tensor([1.0]), mask, behaviour_logprobs=behaviour, is_cap=2.0)
    assert loss.item() == pytest.approx(-(1.5 + 2.0) / 2)
    torch.testing.assert_close(_grad(loss, logprobs), torch.tensor([[-0.75, -1.0]]))
    assert metrics["is_truncated_frac"] == pytest.approx(0.5)
    behaviour_kl = _region("cfpo", logprobs, behaviour, torch.tensor([1.0]), mask)["kl_k1"]
    assert behaviour_kl == pytest.approx(-(math.log(1.5) + math.log(4.0)) / 2)  # log b - log pi


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"name": "ppo2"}, "name"),
        ({"agg": "mean"}, "agg"),
        ({"eps": 0.0}, "eps"),
        ({"name": "grpo", "eps_high": 0.3}, "eps_high"),
        ({"kl_estimator": "k2"}, "kl_estimator"),
    ],
)
def test_bad_settings_name_the_field(settings, field):
    with pytest.raises(ValidationError) as caught:
        LossConfig(**settings)
    assert describe_validation_error(caught.value).startswith(f"{field}:")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"beta": 0.1}, "ref_logprobs"),
        ({"mask": torch.full((2, 3), 0.5)}, "mask"),
        ({"advantages": torch.zeros(3)}, "advantages"),
        ({"old_logprobs": torch.zeros(2, 4)}, "old_logprobs"),
    ],
)
def test_bad_input_names_the_field(kwargs, field):
    args = {
        "logprobs": torch.zeros(2, 3),
        "old_logprobs": torch.zeros(2, 3),
        "advantages": torch.zeros(2),
        "mask": torch.ones(2, 3, dtype=torch.bool),
    }
    config = LossConfig(beta=kwargs.pop("beta", 0.0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=rf"^{field}:"):
        policy_loss(config, **args)


def test_float_mask_equals_bool_mask():
    logprobs, old, adv, mask = _random_batch(seed=8)
    loss_bool, m_bool = _loss("cfpo", logprobs, old, adv, mask)
    loss_float, m_float = _loss("cfpo", logprobs, old, adv, mask.double())
    torch.testing.assert_close(loss_bool, loss_float)
    assert m_bool == m_float
