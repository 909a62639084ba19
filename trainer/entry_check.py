"""What the learner refuses from its stream beyond the wire format: a slot the run does not have, a token id its
model's embedding does not have, a sequence longer than its positions, a group of the wrong size. Taken in, each
would stall the run (a slot never consumed stays pending) or crash the learner on every resume (an IndexError in the
embedding, a CUDA device-side assert, a batch of the wrong shape); refused, it goes to the dead letter with its
reason, and its slot back to the rollout workers (``cfpo.queue``).
"""

from __future__ import annotations

from dataclasses import dataclass

from cfpo.rollout_group import RolloutGroup
from cfpo.run_spec import RunSpec


@dataclass(frozen=True)
class RunEntryCheck:
    total_slots: int
    group_size: int
    vocab_size: int
    max_positions: int | None  # None: the model sets no limit

    @classmethod
    def for_run(cls, spec: RunSpec) -> RunEntryCheck:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(spec.model)
        return cls(
            total_slots=spec.steps * spec.rollout.prompts_per_step,
            group_size=spec.rollout.group_size,
            vocab_size=config.vocab_size,
            max_positions=getattr(config, "max_position_embeddings", None),
        )

    def __call__(self, group: RolloutGroup) -> str | None:
        if group.slot >= self.total_slots:
            return f"slot: {group.slot} is beyond the run's last slot {self.total_slots - 1}"
        for index, sample in enumerate(group.samples):
            for name in ("prompt_ids", "completion_ids"):
                bad = next((i for i in getattr(sample, name) if not 0 <= i < self.vocab_size), None)
                if bad is not None:
                    return f"samples.{index}.{name}: token id {bad} is outside the vocabulary 0-{self.vocab_size - 1}"
            length = len(sample.prompt_ids) + len(sample.completion_ids)
            if self.max_positions is not None and length > self.max_positions:
                return f"samples.{index}: {length} tokens, more than the model's {self.max_positions} positions"
        if len(group.samples) != self.group_size:
            return f"samples: {len(group.samples)} in the group, the run's group_size is {self.group_size}"
        return None
