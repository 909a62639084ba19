"""Policy losses behind one call, so every comparison of CFPO against a clipped baseline compares like with like.

Each loss turns per-token log-probabilities into a per-token loss; aggregation, the optional reference-KL
term, the optional truncated importance weight and the metrics are shared by all of them.

Conventions (tensors are ``[B, T]`` over completion tokens, ``B`` responses of up to ``T`` tokens):

* ``old_logprobs`` is the policy the ratio is taken against (the behaviour policy, or a recomputed proximal
  policy when ``behaviour_logprobs`` is passed too);
* the ratio is ``r = exp(logprobs - old_logprobs)``, its log clamped to ``[-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT]``
  so that stale or corrupt tokens cannot overflow float32 (CFPO squares ``r - 1``);
* ``loss`` is minimised; the surrogates of the paper are maximised, so ``loss = -surrogate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

LOG_RATIO_LIMIT = 20.0
DAPO_DEFAULT_EPS_HIGH = 0.28
AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k3")


@dataclass(frozen=True)
class LossInputs:
    """What a loss sees: masked inputs, the ratio, and the trust region it is asked to respect."""

    logprobs: Tensor  # [B, T], padding zeroed
    log_ratio: Tensor  # [B, T], clamped, padding zeroed
    advantages: Tensor  # [B, T]
    mask: Tensor  # [B, T] bool
    eps_low: float
    eps_high: float
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


def _reinforce(x: LossInputs) -> TokenLoss:
    """REINFORCE: -A log pi, no ratio in the objective (the ratio still feeds the metrics)."""
    return TokenLoss(-x.advantages * x.logprobs, x.ratio)


LOSSES: dict[str, Callable[[LossInputs], TokenLoss]] = {
    "cfpo": _cfpo,
    "grpo": _ppo_clip,
    "dapo": _ppo_clip,
    "gspo": _gspo,
    "cispo": _cispo,
    "reinforce": _reinforce,
}


def policy_loss(
    name: str,
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps: float = 0.2,
    eps_high: float | None = None,
    agg: str = "seq-mean-token-mean",
    ref_logprobs: Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    behaviour_logprobs: Tensor | None = None,
    is_cap: float = 2.0,
    entropy: Tensor | None = None,
    norm_length: int | None = None,
    normaliser: float | Tensor | None = None,
    cispo_eps_low: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The named policy loss, aggregated, and the metrics every loss reports.

    Options:
      eps, eps_high -- trust region [1 - eps, 1 + eps_high]; eps_high defaults to eps (to 0.28 for ``dapo``);
          ``grpo`` is symmetric and refuses eps_high. CFPO uses eps_high for positive advantages.
      agg -- ``seq-mean-token-mean`` (paper Eq. 8), ``token-mean``, ``seq-mean-token-sum-norm`` (Dr.GRPO: token
          sums divided by the constant ``norm_length``, then the mean over responses); ``normaliser`` overrides
          what the sum is divided by (see ``aggregate``).
      ref_logprobs, beta, kl_estimator -- adds beta * KL(pi || pi_ref) per token (``k1`` or ``k3``).
      behaviour_logprobs, is_cap -- when the ratio is taken against a recomputed proximal policy
          (``old_logprobs``), weights each token by the detached importance weight pi_prox / pi_behaviour,
          truncated at ``is_cap``, correcting for data sampled by an older policy.
      entropy -- token entropies [B, T] of the current policy, reported as the ``entropy`` metric.
      cispo_eps_low -- CISPO's importance weight is clipped above at 1 + eps_high and, only when this is given,
          below at 1 - cispo_eps_low (its paper sets no lower bound).
    """
    inputs = _loss_inputs(name, logprobs, old_logprobs, advantages, mask, eps, eps_high, cispo_eps_low)
    if agg not in AGGREGATIONS:
        raise ValueError(f"agg: unknown aggregation {agg!r}; choose one of {', '.join(AGGREGATIONS)}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator: {kl_estimator!r} is not one of {', '.join(KL_ESTIMATORS)}")
    for field, tensor in (("ref_logprobs", ref_logprobs), ("behaviour_logprobs", behaviour_logprobs),
                          ("entropy", entropy)):
        _check_shape(field, tensor, logprobs)
    if beta > 0 and ref_logprobs is None:
        raise ValueError("ref_logprobs: required when beta > 0 (the reference-KL term needs them)")
    mask, logprobs, old_logprobs = inputs.mask, inputs.logprobs, _zero_padding(old_logprobs, inputs.mask).detach()
    terms = LOSSES[name](inputs)

    token_loss = terms.loss
    extra: dict[str, float] = {}
    if behaviour_logprobs is not None:
        behaviour = _zero_padding(behaviour_logprobs, mask).detach()
        weight = torch.exp((old_logprobs - behaviour).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)).clamp(max=is_cap)
        token_loss = token_loss * weight
        extra["is_weight_mean"] = _masked_mean(weight, mask)
        extra["is_truncated_frac"] = _masked_mean((weight >= is_cap).float(), mask)
    if ref_logprobs is not None and beta > 0:
        ref_kl = _kl_to_reference(logprobs, _zero_padding(ref_logprobs, mask).detach(), kl_estimator)
        token_loss = token_loss + beta * ref_kl
        extra["ref_kl"] = _masked_mean(ref_kl, mask)

    loss = aggregate(token_loss, mask, agg, norm_length=norm_length, normaliser=normaliser)
    metrics = _batch_metrics(advantages, mask, entropy)
    metrics.update(extra)
    return loss, metrics


def trust_region_metrics(
    name: str,
    logprobs: Tensor,
    anchor_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps: float = 0.2,
    eps_high: float | None = None,
) -> dict[str, float]:
    """How far the current policy is from an anchor policy (behaviour or proximal), token means over the batch.

    ratio_* and tv are of r = pi / pi_anchor; kl_k1/kl_k3 estimate KL(anchor || current) on the sampled tokens
    (exact for the behaviour policy, which sampled them). clip_frac counts the tokens the named loss's trust region
    clips (for losses that do not clip, those PPO *would* clip): its trust ratio above 1 + eps_high with A > 0, or
    below 1 - eps_low with A < 0 (GSPO's trust ratio is its sequence ratio).
    """
    with torch.no_grad():
        x = _loss_inputs(name, logprobs.detach(), anchor_logprobs, advantages, mask, eps, eps_high, None)
        trust_ratio = LOSSES[name](x).trust_ratio
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
        }


def _loss_inputs(name: str, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, eps: float,
                 eps_high: float | None, cispo_eps_low: float | None) -> LossInputs:
    """Validated, masked inputs of loss ``name``, with the clamped log-ratio against ``old_logprobs``."""
    if name not in LOSSES:
        raise ValueError(f"loss: unknown name {name!r}; choose one of {', '.join(LOSSES)}")
    eps_low, eps_high = _trust_region(name, eps, eps_high)
    mask = _as_bool_mask(mask, logprobs.shape)
    _check_shape("old_logprobs", old_logprobs, logprobs)
    adv = _broadcast_advantages(advantages, logprobs)
    logprobs = _zero_padding(logprobs, mask)
    log_ratio = (logprobs - _zero_padding(old_logprobs, mask).detach()).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    return LossInputs(logprobs, log_ratio, _zero_padding(adv, mask), mask, eps_low, eps_high, cispo_eps_low)


def _check_shape(field: str, tensor: Tensor | None, logprobs: Tensor) -> None:
    if tensor is not None and tensor.shape != logprobs.shape:
        raise ValueError(f"{field}: shape {tuple(tensor.shape)} differs from logprobs {tuple(logprobs.shape)}")


def aggregate(token_values: Tensor, mask: Tensor, agg: str, *, norm_length: int | None = None,
              normaliser: float | Tensor | None = None) -> Tensor:
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
            raise ValueError("norm_length: required for seq-mean-token-sum-norm (Dr.GRPO's constant; a run spec "
                             "sets it to rollout.max_tokens)")
        return mask.new_tensor(mask.shape[0] * norm_length, dtype=torch.float32)
    raise ValueError(f"agg: unknown aggregation {agg!r}; choose one of {', '.join(AGGREGATIONS)}")


def _trust_region(name: str, eps: float, eps_high: float | None) -> tuple[float, float]:
    if eps <= 0:
        raise ValueError(f"eps: must be > 0, got {eps}")
    if name == "grpo" and eps_high is not None and eps_high != eps:
        raise ValueError("eps_high: grpo clips symmetrically; use loss 'dapo' for a separate upper bound")
    if eps_high is None:
        eps_high = DAPO_DEFAULT_EPS_HIGH if name == "dapo" else eps
    if eps_high <= 0:
        raise ValueError(f"eps_high: must be > 0, got {eps_high}")
    return eps, eps_high


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
    raise ValueError(
        f"advantages: shape {tuple(advantages.shape)} must be [B] or [B, T] = {tuple(logprobs.shape)}"
    )


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
        if advantages.dim() == 1:
            adv_values = advantages[mask.any(-1)].float()
        else:
            adv_values = advantages[mask].float()
        metrics = {
            "adv_mean": float(adv_values.mean()) if adv_values.numel() else 0.0,
            "adv_std": float(adv_values.std(unbiased=False)) if adv_values.numel() else 0.0,
        }
        if entropy is not None:
            metrics["entropy"] = _masked_mean(entropy, mask)
    return metrics
