"""Policy losses behind one call, so every comparison of CFPO against a clipped baseline compares like with like.

Each loss turns per-token log-probabilities into a per-token loss; aggregation, the optional reference-KL
term, the optional truncated importance weight and the metrics are shared by all of them.

Conventions (tensors are ``[B, T]`` over completion tokens, ``B`` responses of up to ``T`` tokens):

* ``old_logprobs`` is the policy the ratio is taken against (the behaviour policy, or a recomputed proximal
  policy when ``behaviour_logprobs`` is passed too);
* the ratio is ``r = exp(logprobs - old_logprobs)``, its log clamped to ``[-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT]``
  so that stale or corrupt tokens cannot overflow float32 (CFPO squares ``r - 1``);
* ``loss`` is minimised; the surrogates of the paper are maximised, so ``loss = -surrogate``;
* metrics that a token-weighted mean over micro-batches would get wrong (a standard deviation, an effective sample
  size, a mean over responses) are ``Pooled``: floats that carry the sums the learner merges them from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from cfpo.config import AGGREGATIONS, LossConfig
from trainer.pooled import Pooled

LOG_RATIO_LIMIT = 20.0


@dataclass(frozen=True)
class LossInputs:
    """What a loss sees: masked inputs, the ratio, and the trust region it is asked to respect."""

    logprobs: Tensor  # [B, T], padding zeroed
    old_logprobs: Tensor  # [B, T], the anchor's, detached, padding zeroed
    log_ratio: Tensor  # [B, T], clamped, padding zeroed
    advantages: Tensor  # [B, T]
    mask: Tensor  # [B, T] bool
    eps_low: float
    eps_high: float
    dppo_ratio_cap: float
    cispo_eps_low: float | None = None

    @property
    def ratio(self) -> Tensor:
        return torch.exp(self.log_ratio)


@dataclass(frozen=True)
class TokenLoss:
    """A loss's per-token values and the ratio it holds to its trust region (for the clip metrics)."""

    loss: Tensor
    trust_ratio: Tensor


def _cfpo(x: LossInputs) -> TokenLoss:
    """CFPO (paper Eq. 8): r*A - |A|/(2 eps) (r-1)^2, maximised at r = 1 + sign(A) eps, never flat."""
    r, adv = x.ratio, x.advantages
    eps = torch.where(adv > 0, adv.new_tensor(x.eps_high), adv.new_tensor(x.eps_low))
    surrogate = r * adv - adv.abs() / (2 * eps) * (r - 1) ** 2
    return TokenLoss(-surrogate, r)


def _clipped(x: LossInputs, ratio: Tensor) -> Tensor:
    """PPO's pessimistic clipped surrogate: flat (zero gradient) once the ratio leaves the region A favours."""
    adv = x.advantages
    return torch.minimum(ratio * adv, ratio.clamp(1 - x.eps_low, 1 + x.eps_high) * adv)


def _ppo_clip(x: LossInputs) -> TokenLoss:
    return TokenLoss(-_clipped(x, x.ratio), x.ratio)


def _gspo(x: LossInputs) -> TokenLoss:
    """GSPO: one length-normalised ratio per response, clipped as a whole.

    Written in its token form s_i * pi_t / sg(pi_t), whose value is the sequence ratio s_i on every token and
    whose gradient is GSPO's, so the shared aggregation applies unchanged.
    """
    lengths = x.mask.sum(-1).clamp(min=1)
    seq_log_ratio = (x.log_ratio.sum(-1) / lengths).detach()
    token_log_ratio = seq_log_ratio[:, None] + x.log_ratio - x.log_ratio.detach()
    ratio = torch.exp(token_log_ratio)
    return TokenLoss(-_clipped(x, ratio), ratio)


def _cispo(x: LossInputs) -> TokenLoss:
    """CISPO: the importance weight is clipped (above only, unless a lower bound is asked for) and detached;
    every token keeps its policy gradient."""
    low = None if x.cispo_eps_low is None else 1 - x.cispo_eps_low
    weight = x.ratio.clamp(min=low, max=1 + x.eps_high).detach()
    return TokenLoss(-weight * x.advantages * x.logprobs, x.ratio)


def _dppo_tv(x: LossInputs) -> TokenLoss:
    """DPPO with the binary total-variation mask (arXiv 2602.04879), as verl's ``dppo_tv``
    (verl-project/verl, verl/trainer/ppo/core_algos.py, ``compute_policy_loss_dppo_tv``; PRIME-RL's default loss,
    src/prime_rl/trainer/rl/loss.py, masks alike): the trust region is on the sampled token's probability, not its
    ratio, so a rare token may move far in ratio and a likely one little. A token leaves the gradient once it has
    moved past the region on the side its advantage favours: pi - pi_old > eps_high with A > 0, or
    pi - pi_old < -eps_low otherwise. The rest get -A sg(min(r, dppo_ratio_cap)) log pi, a policy gradient weighted
    by the truncated ratio. The trust ratio 1 + pi - pi_old puts that region at [1 - eps_low, 1 + eps_high], so
    the clip metrics count exactly the masked tokens."""
    shift = torch.exp(x.logprobs) - torch.exp(x.old_logprobs)
    kept = torch.where(x.advantages > 0, shift <= x.eps_high, shift >= -x.eps_low)
    weight = x.ratio.clamp(max=x.dppo_ratio_cap).detach()
    return TokenLoss(-x.advantages * weight * x.logprobs * kept.to(weight.dtype), 1 + shift)


def _reinforce(x: LossInputs) -> TokenLoss:
    """REINFORCE: -A log pi, no ratio in the objective (the ratio still feeds the metrics)."""
    return TokenLoss(-x.advantages * x.logprobs, x.ratio)


LOSSES: dict[str, Callable[[LossInputs], TokenLoss]] = {
    "cfpo": _cfpo,
    "grpo": _ppo_clip,
    "dapo": _ppo_clip,
    "gspo": _gspo,
    "cispo": _cispo,
    "dppo_tv": _dppo_tv,
    "reinforce": _reinforce,
}


def policy_loss(
    config: LossConfig,
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logprobs: Tensor | None = None,
    behaviour_logprobs: Tensor | None = None,
    entropy: Tensor | None = None,
    normaliser: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The configured policy loss, aggregated, and the metrics every loss reports.

    ``config`` (validated where it was read) names the loss, its trust region, the aggregation and the optional
    terms. The tensors:
      ref_logprobs -- the reference policy's, for the beta * KL(pi || pi_ref) term (required when beta > 0).
      behaviour_logprobs -- when the ratio is taken against a recomputed proximal policy (``old_logprobs``),
          weights each token by the detached importance weight pi_prox / pi_behaviour, truncated at ``is_cap``,
          correcting for data sampled by an older policy.
      entropy -- token entropies [B, T] of the current policy, reported as the ``entropy`` metric.
      normaliser -- overrides what the aggregated sum is divided by (see ``aggregate``).
    """
    inputs = _loss_inputs(config, logprobs, old_logprobs, advantages, mask)
    for field, tensor in (
        ("ref_logprobs", ref_logprobs),
        ("behaviour_logprobs", behaviour_logprobs),
        ("entropy", entropy),
    ):
        _check_shape(field, tensor, logprobs)
    if config.beta > 0 and ref_logprobs is None:
        raise ValueError("ref_logprobs: required when beta > 0 (the reference-KL term needs them)")
    mask, logprobs = inputs.mask, inputs.logprobs
    token_loss = LOSSES[config.name](inputs).loss
    extra: dict[str, float] = {}
    if behaviour_logprobs is not None:
        proximal = _zero_padding(old_logprobs, mask).detach()
        behaviour = _zero_padding(behaviour_logprobs, mask).detach()
        weight = torch.exp((proximal - behaviour).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)).clamp(max=config.is_cap)
        token_loss = token_loss * weight
        extra["is_weight_mean"] = _masked_mean(weight, mask)
        extra["is_truncated_frac"] = _masked_mean((weight >= config.is_cap).float(), mask)
    if ref_logprobs is not None and config.beta > 0:
        ref_kl = _kl_to_reference(logprobs, _zero_padding(ref_logprobs, mask).detach(), config.kl_estimator)
        token_loss = token_loss + config.beta * ref_kl
        extra["ref_kl"] = _masked_mean(ref_kl, mask)

    loss = aggregate(token_loss, mask, config.agg, norm_length=config.norm_length, normaliser=normaliser)
    metrics = _batch_metrics(advantages, mask, entropy)
    metrics.update(extra)
    return loss, metrics


def trust_region_metrics(
    config: LossConfig, logprobs: Tensor, anchor_logprobs: Tensor, advantages: Tensor, mask: Tensor
) -> dict[str, float]:
    """How far the current policy is from an anchor policy (behaviour or proximal), token means over the batch.

    ratio_* and tv are of r = pi / pi_anchor; kl_k1/kl_k3 estimate KL(anchor || current) on the sampled tokens
    (exact for the behaviour policy, which sampled them). clip_frac counts the tokens the configured loss's trust
    region clips (for losses that do not clip, those PPO *would* clip): its trust ratio above 1 + eps_high with
    A > 0, or below 1 - eps_low with A < 0 (GSPO's trust ratio is its sequence ratio; DPPO's, 1 + pi - pi_anchor).
    ess is the normalised effective sample size of the ratios as importance weights, (sum r)^2 / (N sum r^2) over
    the N tokens: 1 when all are equal (on-policy), towards 1/N as a few tokens carry the weight.
    """
    with torch.no_grad():
        x = _loss_inputs(config, logprobs.detach(), anchor_logprobs, advantages, mask)
        trust_ratio = LOSSES[config.name](x).trust_ratio
        ratio, adv, mask = x.ratio, x.advantages, x.mask
        high = (trust_ratio > 1 + x.eps_high) & (adv > 0)
        low = (trust_ratio < 1 - x.eps_low) & (adv < 0)
        masked_ratio = ratio[mask]
        has_tokens = bool(mask.any())
        return {
            "clip_frac": _masked_mean((high | low).float(), mask),
            "clip_frac_high": _masked_mean(high.float(), mask),
            "clip_frac_low": _masked_mean(low.float(), mask),
            "ratio_mean": _masked_mean(ratio, mask),
            "ratio_min": float(masked_ratio.min()) if has_tokens else 1.0,
            "ratio_max": float(masked_ratio.max()) if has_tokens else 1.0,
            "tv": 0.5 * _masked_mean((ratio - 1).abs(), mask),
            "kl_k1": _masked_mean(-x.log_ratio, mask),
            "kl_k3": _masked_mean(torch.exp(x.log_ratio) - x.log_ratio - 1, mask),
            "ess": Pooled.of("ess", masked_ratio),
        }


def _loss_inputs(
    config: LossConfig, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor
) -> LossInputs:
    """Masked inputs of the configured loss, with the clamped log-ratio against ``old_logprobs``."""
    eps_low, eps_high = config.trust_region
    mask = _as_bool_mask(mask, logprobs.shape)
    _check_shape("old_logprobs", old_logprobs, logprobs)
    adv = _broadcast_advantages(advantages, logprobs)
    logprobs = _zero_padding(logprobs, mask)
    old_logprobs = _zero_padding(old_logprobs, mask).detach()
    return LossInputs(
        logprobs=logprobs,
        old_logprobs=old_logprobs,
        log_ratio=(logprobs - old_logprobs).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT),
        advantages=_zero_padding(adv, mask),
        mask=mask,
        eps_low=eps_low,
        eps_high=eps_high,
        dppo_ratio_cap=config.dppo_ratio_cap,
        cispo_eps_low=config.cispo_eps_low,
    )


def _check_shape(field: str, tensor: Tensor | None, logprobs: Tensor) -> None:
    if tensor is not None and tensor.shape != logprobs.shape:
        raise ValueError(f"{field}: shape {tuple(tensor.shape)} differs from logprobs {tuple(logprobs.shape)}")


def aggregate(
    token_values: Tensor,
    mask: Tensor,
    agg: str,
    *,
    norm_length: int | None = None,
    normaliser: float | Tensor | None = None,
) -> Tensor:
    """Reduce per-token values to a scalar; responses without tokens count for nothing.

    The sum is divided by ``normaliser``, by default ``aggregation_normaliser`` of this mask. A caller that splits
    one optimizer step into micro-batches passes the whole step's normaliser over the number of micro-batches, so
    that the accumulated gradient is the whole step's, however the tokens fall into micro-batches.
    """
    values = torch.where(mask, token_values, torch.zeros_like(token_values))
    if normaliser is None:
        normaliser = aggregation_normaliser(mask, agg, norm_length)
    if agg in ("token-mean", "seq-mean-token-sum-norm"):
        return values.sum() / normaliser
    if agg == "seq-mean-token-mean":
        return (values.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / normaliser
    raise ValueError(f"agg: unknown aggregation {agg!r}; choose one of {', '.join(AGGREGATIONS)}")


def aggregation_normaliser(mask: Tensor, agg: str, norm_length: int | None = None) -> Tensor:
    """What an aggregation divides its sum by: tokens (token-mean), responses with tokens (seq-mean-token-mean),
    or responses x Dr.GRPO's constant ``norm_length`` (seq-mean-token-sum-norm), at least 1."""
    if agg == "token-mean":
        return mask.sum().clamp(min=1)
    if agg == "seq-mean-token-mean":
        return (mask.sum(-1) > 0).sum().clamp(min=1)
    if agg == "seq-mean-token-sum-norm":
        if norm_length is None:
            raise ValueError(
                "norm_length: required for seq-mean-token-sum-norm (Dr.GRPO's constant; a run spec "
                "sets it to rollout.max_tokens)"
            )
        return mask.new_tensor(mask.shape[0] * norm_length, dtype=torch.float32)
    raise ValueError(f"agg: unknown aggregation {agg!r}; choose one of {', '.join(AGGREGATIONS)}")


def _as_bool_mask(mask: Tensor, shape: torch.Size) -> Tensor:
    if mask.shape != shape:
        raise ValueError(f"mask: shape {tuple(mask.shape)} differs from logprobs {tuple(shape)}")
    if mask.dtype == torch.bool:
        return mask
    if not torch.all((mask == 0) | (mask == 1)):
        raise ValueError("mask: a float mask must hold only 0 and 1; pass a bool mask")
    return mask != 0


def _broadcast_advantages(advantages: Tensor, logprobs: Tensor) -> Tensor:
    if advantages.dim() == 1 and advantages.shape[0] == logprobs.shape[0]:
        return advantages[:, None].expand_as(logprobs).to(logprobs.dtype)
    if advantages.shape == logprobs.shape:
        return advantages.to(logprobs.dtype)
    raise ValueError(f"advantages: shape {tuple(advantages.shape)} must be [B] or [B, T] = {tuple(logprobs.shape)}")


def _zero_padding(values: Tensor, mask: Tensor) -> Tensor:
    """Zero padded positions so garbage there (inf, nan) reaches neither the loss nor its gradient."""
    return torch.where(mask, values, torch.zeros_like(values))


def _kl_to_reference(logprobs: Tensor, ref_logprobs: Tensor, estimator: str) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) on tokens sampled from pi."""
    log_ratio = (ref_logprobs - logprobs).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    if estimator == "k1":
        return -log_ratio
    return torch.exp(log_ratio) - log_ratio - 1


def _masked_mean(values: Tensor, mask: Tensor) -> float:
    return float(values.detach()[mask].mean()) if mask.any() else 0.0


def _batch_metrics(advantages: Tensor, mask: Tensor, entropy: Tensor | None) -> dict[str, float]:
    """What every loss reports of the batch itself: its advantages (one per response when given per response)
    and, when given, the current policy's mean token entropy."""
    with torch.no_grad():
        adv_values = advantages[mask.any(-1)] if advantages.dim() == 1 else advantages[mask]
        metrics: dict[str, float] = {"adv_mean": Pooled.of("mean", adv_values), "adv_std": Pooled.of("std", adv_values)}
        if entropy is not None:
            metrics["entropy"] = _masked_mean(entropy, mask)
    return metrics
