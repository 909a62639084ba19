"""Redis's memory budget, checked at submit: a run whose queue could take Redis past it, beside the queues of the
runs already queued and running, is refused with how far over it would go.

A run's queue holds at most ``spec.queue_capacity`` groups (producers wait beyond it) and its dead-letter stream
the last ``dead_letter_max_len`` malformed entries, each at most ``max_entry_bytes`` of the run's sizes. Prompts
are not known until the task is read, so the estimate assumes prompts of up to ``PROMPT_TOKENS_ASSUMED`` tokens
(stored once per group, a small part of it). Two submits at once may both pass: this is a check at the door, and
Redis's own ``maxmemory`` (compose, the chart) is the wall behind it.
"""

from __future__ import annotations

from cfpo.queue import QueueSettings
from cfpo.rollout_group import max_entry_bytes
from cfpo.run_spec import RunSpec

PROMPT_TOKENS_ASSUMED = 1024
DEAD_LETTERS_KEPT: int = QueueSettings.model_fields["dead_letter_max_len"].default
MIB = 1 << 20


class OverBudget(ValueError):
    """The run's queue would take Redis past its memory budget."""


def queue_bytes(spec: RunSpec) -> int:
    """The most the run's rollout and dead-letter streams hold at once."""
    entry = max_entry_bytes(spec.rollout.group_size, PROMPT_TOKENS_ASSUMED, spec.rollout.max_tokens)
    return (spec.queue_capacity + DEAD_LETTERS_KEPT) * entry


def check_budget(spec: RunSpec, active: list[RunSpec], budget_mib: int) -> None:
    """Raise OverBudget, saying by how much and what to change, when ``spec`` does not fit beside ``active``."""
    needed, taken = queue_bytes(spec), sum(map(queue_bytes, active))
    over = needed + taken - budget_mib * MIB
    if over <= 0:
        return
    raise OverBudget(
        f"the run's queue needs up to {needed / MIB:.1f} MiB of Redis ({spec.queue_capacity} groups of "
        f"{spec.rollout.group_size} completions of up to {spec.rollout.max_tokens} tokens, and {DEAD_LETTERS_KEPT} "
        f"dead letters); with the {len(active)} queued and running runs' {taken / MIB:.1f} MiB that is "
        f"{over / MIB:.1f} MiB over redis_budget_mib = {budget_mib}. Make rollout.max_tokens, rollout.group_size, "
        "rollout.prompts_per_step or checkpoint_every smaller, wait for runs to end, or give Redis more memory "
        "and the control API a larger --redis-budget-mib"
    )
