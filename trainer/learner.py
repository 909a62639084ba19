"""The learner step: a rollout batch becomes ``iterations x minibatches`` optimizer steps on a DeepSpeed engine.

Each optimizer step increments the policy version. The engine owns the model, the optimizer, gradient
accumulation and clipping, ZeRO partitioning and checkpoints; this module owns what RL adds on top: log-probs
at the sampling temperature, the policy loss, and the bookkeeping that makes a resumed run bit-identical.

With several ranks, every rank holds the whole batch and trains its share of each minibatch (every
``world_size``-th sequence of the same seeded order). Each divides its loss by the whole minibatch's normaliser, so
DeepSpeed's average over ranks and micro-batches is the minibatch's gradient, and the metrics are merged over all
ranks' micro-batches: the steps and the logged values are a lone learner's, up to float rounding.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cfpo.config import LearnerConfig
from cfpo.metrics import ANCHORS, BUCKETED_STEP_VALUES, anchored, bucket_key
from cfpo.sample import Sample
from trainer.distributed import gathered, init_distributed, quiet_deepspeed, rank, world_size
from trainer.logprobs import PackedBatch, completion_logprobs, pack
from trainer.losses import aggregation_normaliser, policy_loss, trust_region_metrics
from trainer.micro_batches import split_by_budget, split_by_count, split_further
from trainer.pooled import Pooled

CLIENT_STATE_KEY = "cfpo"
STALENESS_BUCKETS = ((0, 0, "0"), (1, 1, "1"), (2, 2, "2"), (3, 4, "3-4"), (5, 8, "5-8"), (9, None, "9+"))


def _staleness_buckets(staleness: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows of each non-empty bucket of versions between generation and now (staleness, or policy lag)."""
    buckets = {}
    for low, high, name in STALENESS_BUCKETS:
        rows = (staleness >= low) & (staleness <= high if high is not None else True)
        if rows.any():
            buckets[name] = rows
    return buckets


def merge_metrics(parts: list[tuple[dict[str, float], float]]) -> dict[str, float]:
    """Micro-batch metrics (with their token counts) as one step's, exactly: ``Pooled`` statistics from their
    summed sums, extremes of the extremes, and the rest, token means, as token-weighted means."""
    merged: dict[str, float] = {}
    total = sum(tokens for _, tokens in parts) or 1.0
    for key in parts[0][0]:
        values = [metrics[key] for metrics, tokens in parts if tokens > 0] or [parts[0][0][key]]
        if isinstance(values[0], Pooled):
            merged[key] = Pooled.merge([metrics[key] for metrics, _ in parts])
        elif key.endswith("_min"):
            merged[key] = min(values)
        elif key.endswith("_max"):
            merged[key] = max(values)
        else:
            merged[key] = sum(metrics[key] * tokens for metrics, tokens in parts) / total
    return merged


@dataclass
class StepResult:
    """What one optimizer step did: its loss metrics (micro-batch means) and the engine's figures."""

    version: int
    iteration: int
    minibatch: int
    metrics: dict[str, float] = field(default_factory=dict)


def _use_bf16(precision: str) -> bool:
    if precision == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return precision == "bf16"


def micro_batch_size(config: LearnerConfig, ranks: int) -> int:
    """Sequences per forward on each of ``ranks`` ranks (with a token budget: at most, a rank's whole share); a
    ``ValueError`` naming the setting if they cannot split each minibatch evenly."""
    share, left = divmod(config.minibatch_size, ranks)
    micro = config.micro_batch_size or share
    if left or share % micro:
        setting = "micro_batch_size" if config.micro_batch_size else "minibatches"
        raise ValueError(
            f"learner.{setting}: {ranks} ranks x micro-batches of {micro} do not divide the minibatch of "
            f"{config.minibatch_size} sequences; pick sizes whose product divides it"
        )
    return micro


def _use_checkpointing(setting: str) -> bool:
    return setting == "on" or (setting == "auto" and torch.cuda.is_available())


def _train_mode_without_dropout(model: torch.nn.Module) -> None:
    """Training mode, which Hugging Face's layers need to recompute themselves, with dropout still off: the
    learner's log-probs are compared with generation's, which has none."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()


def deepspeed_config(config: LearnerConfig, ranks: int = 1) -> dict[str, Any]:
    """The engine's settings. The learner marks each step's last micro-batch as the accumulation boundary itself
    (their number follows the token budget), so the accumulation steps here only describe the count-sized case.
    Under bf16, gradients accumulate in fp32, which DeepSpeed does in a partitioned (ZeRO >= 1) optimizer."""
    micro = micro_batch_size(config, ranks)
    bf16 = _use_bf16(config.precision)
    settings: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": config.minibatch_size // (micro * ranks),
        "gradient_clipping": config.optimizer.grad_clip,
        "zero_optimization": {"stage": max(config.zero_stage, 1) if bf16 else config.zero_stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 2**31 - 1,
    }
    if bf16:
        settings["data_types"] = {"grad_accum_dtype": "fp32"}
    return settings


class Learner:
    """A policy on a DeepSpeed engine, trained one rollout batch at a time."""

    def __init__(self, model_dir: str | Path, config: LearnerConfig):
        import deepspeed
        from transformers import AutoModelForCausalLM

        quiet_deepspeed()
        init_distributed()
        self.config = config
        self.version = 0
        torch.manual_seed(config.seed)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if _use_checkpointing(config.gradient_checkpointing):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            _train_mode_without_dropout(model)
        optimizer = torch.optim.AdamW(  # torch's AdamW: DeepSpeed's CPU Adam would need a compiled op
            model.parameters(),
            lr=config.optimizer.lr,
            betas=config.optimizer.betas,
            weight_decay=config.optimizer.weight_decay,
        )
        self.rank, self.world_size = rank(), world_size()
        self.micro_batch_size = micro_batch_size(config, self.world_size)
        self.engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(config, self.world_size)
        )
        self.pad_token_id = model.config.pad_token_id or 0
        self.reference = self._load_reference(model_dir) if config.loss.beta > 0 else None

    def _load_reference(self, model_dir: str | Path) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.engine.module.dtype)
        return reference.to(self.engine.device).eval().requires_grad_(False)

    def train_on(self, samples: list[Sample]) -> list[StepResult]:
        """Every optimizer step on one batch at once, for callers that do nothing between them."""
        return list(self.optimizer_steps(samples))

    def optimizer_steps(self, samples: list[Sample]) -> Iterator[StepResult]:
        """Run ``iterations`` passes of ``minibatches`` optimizer steps over one batch, yielding after each: the
        caller pushes weights between them."""
        config = self.config
        if len(samples) != config.batch_size:
            raise ValueError(
                f"samples: got {len(samples)} sequences, the learner is configured for {config.batch_size}"
            )
        batch = pack(samples, self.pad_token_id).to(self.engine.device)
        proximal, fill_proximal = self._proximal_logprobs(batch)
        reference = self._frozen_logprobs(self.reference, batch) if self.reference is not None else None
        staleness = self.version - batch.min_versions  # fixed at consumption: the controlled variable
        for iteration in range(config.iterations):
            order = torch.randperm(len(batch), generator=torch.Generator().manual_seed(config.seed + self.version))
            for minibatch, indices in enumerate(order.split(config.minibatch_size)):
                started = time.perf_counter()
                lag = self.version - batch.min_versions  # grows with every update on the batch
                metrics = self._optimizer_step(
                    batch,
                    indices.to(self.engine.device),
                    proximal,
                    fill_proximal,
                    reference,
                    {"staleness": staleness, "lag": lag},
                )
                if fill_proximal and self.world_size > 1:
                    torch.distributed.all_reduce(proximal)  # each rank filled its own rows; the others are 0
                fill_proximal = False
                metrics["staleness_mean"] = float(staleness.float().mean())
                metrics["staleness_max"] = float(staleness.max())
                metrics["policy_lag"] = float(lag.max())  # the version updated - the oldest that generated data
                metrics["policy_lag_mean"] = float(lag.float().mean())
                self.version += 1
                metrics["step_seconds"] = time.perf_counter() - started
                yield StepResult(self.version, iteration, minibatch, metrics)

    def _proximal_logprobs(self, batch: PackedBatch) -> tuple[torch.Tensor, bool]:
        """The learner's own log-probs before its first update on this batch (the proximal anchor), and whether
        the first optimizer step is to fill them in: when one minibatch covers the batch, that step's forward sees
        exactly this policy, so no extra forward is needed."""
        if self.config.minibatches == 1:
            return torch.zeros_like(batch.behaviour_logprobs), True
        return self._frozen_logprobs(self.engine.module, batch), False

    def _frozen_logprobs(self, model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
        logprobs = torch.zeros_like(batch.behaviour_logprobs)
        with torch.no_grad():
            # Every rank cuts the whole batch the same way, so under ZeRO-3 all enter as many gathers.
            for chunk in self._micro_batches(torch.arange(len(batch), device=batch.input_ids.device), batch):
                logprobs[chunk] = completion_logprobs(
                    model, batch.select(chunk), self.config.temperature, self.config.logit_chunk_tokens
                )[0]
        return logprobs

    def _micro_batches(self, indices: torch.Tensor, batch: PackedBatch, agree: bool = False) -> list[torch.Tensor]:
        """``indices`` cut into micro-batches of sequences of similar length (``trainer.micro_batches``). With
        ``agree`` (each rank cutting its own share), every rank gets the same number: the most any rank needs."""
        lengths = batch.attention_mask.sum(1)
        budget = self.config.max_tokens_per_micro_batch
        if budget is None:
            return split_by_count(indices, lengths, self.micro_batch_size)
        pieces = split_by_budget(indices, lengths, budget)
        if agree and self.world_size > 1:
            count = torch.tensor(len(pieces), device=indices.device)
            torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
            pieces = split_further(pieces, lengths, int(count))
        return pieces

    def _optimizer_step(
        self,
        batch: PackedBatch,
        indices: torch.Tensor,
        proximal: torch.Tensor,
        fill_proximal: bool,
        reference: torch.Tensor | None,
        ages: dict[str, torch.Tensor],
    ) -> dict[str, float]:
        """One optimizer step on ``indices`` (the minibatch; this rank trains its share); its metrics, and those
        of each bucket of each of ``ages`` (per sample: staleness at consumption, policy lag now) as
        ``<metric>/<age>_<bucket>``. With ``fill_proximal``, this step's forward is the proximal policy's and fills
        ``proximal`` in (this rank's rows)."""
        parts: list[tuple[dict[str, float], float]] = []
        bucket_parts: dict[tuple[str, str], list[tuple[dict[str, float], float]]] = {}  # by (age, bucket)
        micro_batches = self._micro_batches(indices[self.rank :: self.world_size], batch, agree=True)
        # The whole step's normaliser per rank: micro-batch gradients add up unscaled (``scale_wrt_gas=False``)
        # and DeepSpeed averages the ranks', so each divides its sum by this and the step's gradient is the
        # minibatch's, however its tokens are split.
        normaliser = (
            aggregation_normaliser(batch.completion_mask[indices], self.config.loss.agg, self.config.loss.norm_length)
            / self.world_size
        )
        step_loss = 0.0
        for position, chunk in enumerate(micro_batches):
            self.engine.set_gradient_accumulation_boundary(position == len(micro_batches) - 1)
            micro = batch.select(chunk)
            logprobs, entropy = completion_logprobs(
                self.engine, micro, self.config.temperature, self.config.logit_chunk_tokens
            )
            if fill_proximal:
                proximal[chunk] = logprobs.detach()
            proximal_chunk = proximal[chunk]
            loss, metrics = self._loss(
                logprobs,
                micro,
                proximal_chunk,
                reference[chunk] if reference is not None else None,
                entropy.detach(),
                normaliser,
            )
            self.engine.backward(loss, scale_wrt_gas=False)
            step_loss += float(loss.detach())
            parts.append((metrics, float(micro.completion_mask.sum())))
            with torch.no_grad():
                for age, values in ages.items():
                    for bucket, rows in _staleness_buckets(values[chunk]).items():
                        mask = micro.completion_mask & rows[:, None]
                        bucket_metrics = {
                            **self._anchored_metrics(logprobs, micro, proximal_chunk, mask),
                            "entropy": float(entropy[mask].mean()) if mask.any() else 0.0,
                        }
                        bucket_parts.setdefault((age, bucket), []).append((bucket_metrics, float(mask.sum())))
        unclipped_norm = self._stage0_grad_norm()
        self.engine.step()  # the boundary was the last micro-batch: reduce, clip, step the optimizer
        parts, bucket_parts, step_loss = self._across_ranks(parts, bucket_parts, step_loss)
        merged = {**merge_metrics(parts), "loss": step_loss}
        for (age, bucket), parts_of_bucket in bucket_parts.items():
            merged.update(
                {
                    bucket_key(key, age, bucket): value
                    for key, value in merge_metrics(parts_of_bucket).items()
                    if key in BUCKETED_STEP_VALUES
                }
            )
        grad_norm = self.engine.get_global_grad_norm()
        merged["grad_norm"] = float(grad_norm) if grad_norm is not None else unclipped_norm
        merged["lr"] = float(self.engine.get_lr()[0])
        merged["tokens"] = float(batch.completion_mask[indices].sum())
        return merged

    def _across_ranks(self, parts, bucket_parts, step_loss):
        """Every rank's micro-batch metrics, for merging as one learner's; the loss is the ranks' mean (each
        rank's is its share of the minibatch's, times the number of ranks)."""
        if self.world_size == 1:
            return parts, bucket_parts, step_loss
        everyone = gathered((parts, bucket_parts, step_loss))
        merged_buckets: dict[tuple[str, str], list[tuple[dict[str, float], float]]] = {}
        for _, buckets, _ in everyone:
            for key, bucket in buckets.items():
                merged_buckets.setdefault(key, []).extend(bucket)
        all_parts = [part for rank_parts, _, _ in everyone for part in rank_parts]
        return all_parts, merged_buckets, sum(loss for *_, loss in everyone) / self.world_size

    def _stage0_grad_norm(self) -> float:
        """The global gradient norm before clipping, for ZeRO stage 0, where DeepSpeed reports none (its
        get_global_grad_norm returns None); the partitioned stages report their own."""
        if self.engine.zero_optimization_stage() != 0:
            return float("nan")
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

    def _loss(self, logprobs, micro: PackedBatch, proximal, reference, entropy, normaliser):
        """The configured loss against its anchor (proximal: with the behaviour's log-probs as a truncated IS
        weight), and the trust-region metrics against both anchors. ``normaliser``: what the aggregation divides
        by (the whole optimizer step's share)."""
        loss_config = self.config.loss
        decoupled = loss_config.ratio_reference == "proximal"
        loss, metrics = policy_loss(
            loss_config,
            logprobs,
            proximal if decoupled else micro.behaviour_logprobs,
            micro.advantages,
            micro.completion_mask,
            ref_logprobs=reference,  # loaded exactly when beta > 0
            behaviour_logprobs=micro.behaviour_logprobs if decoupled else None,
            entropy=entropy,
            normaliser=normaliser,
        )
        return loss, {**metrics, **self._anchored_metrics(logprobs, micro, proximal, micro.completion_mask)}

    def _anchored_metrics(self, logprobs, micro: PackedBatch, proximal, mask) -> dict[str, float]:
        """The trust-region metrics against each anchor, as ``<anchor>_<metric>``, whichever one the loss uses."""
        anchors = {"behaviour": micro.behaviour_logprobs, "proximal": proximal}
        return {
            anchored(anchor, key): value
            for anchor in ANCHORS
            for key, value in trust_region_metrics(
                self.config.loss, logprobs, anchors[anchor], micro.advantages, mask
            ).items()
        }

    def save_checkpoint(self, directory: str | Path, tag: str, client_state: dict[str, Any] | None = None) -> None:
        """Save engine, optimizer and version under ``tag``, leaving ``latest`` as it is: the caller names the new
        checkpoint there once it is complete and the run still its own (``trainer.checkpoints.point_latest``)."""
        state = {"version": self.version, **(client_state or {})}
        try:
            self.engine.save_checkpoint(
                str(directory), tag=tag, client_state={CLIENT_STATE_KEY: state}, save_latest=False
            )
        except BaseException:
            if self.rank == 0:  # half-written, it could never be loaded, and would hold the space a retry needs
                shutil.rmtree(Path(directory) / tag, ignore_errors=True)
            raise

    def load_checkpoint(self, directory: str | Path, tag: str | None = None) -> dict[str, Any]:
        """Restore a checkpoint (the latest when no tag is given); returns the state given to save_checkpoint."""
        path, checkpoint = self.engine.load_checkpoint(str(directory), tag=tag)
        if path is None:
            raise FileNotFoundError(f"checkpoint: none found in {directory} (tag {tag or 'latest'})")
        # DeepSpeed hands back the whole checkpoint as "client state"; ours is the one entry we wrote.
        state = checkpoint[CLIENT_STATE_KEY]
        self.version = int(state["version"])
        return state
