"""Held-out evaluation inside a run: the learner's view of how well the policy it just served generalises.

Run by the learner right after a weight push, while generation serves exactly that policy version; results go
to ``eval.jsonl`` in the run directory and to the eval gauges on the learner's /metrics.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cfpo.clients.generation import GenerationClient
from cfpo.clients.reward import RewardClient
from cfpo.evaluation import evaluate
from cfpo.metrics import LEARNER_EVAL_ACCURACY, LEARNER_EVAL_MEAN_REWARD, PrometheusRecorder
from cfpo.run_spec import RunSpec
from cfpo.tasks import TaskDataError, load_task

log = logging.getLogger("cfpo.learner")


class HeldOutEvaluator:
    def __init__(
        self,
        spec: RunSpec,
        generation: GenerationClient,
        rewards: RewardClient,
        log_path: Path,
        recorder: PrometheusRecorder,
        labels: dict[str, str],
    ):
        from transformers import AutoTokenizer

        self.spec, self.generation, self.rewards, self.log_path = spec, generation, rewards, log_path
        self.recorder, self.labels = recorder, labels
        self.problems = self._held_out_problems(spec)
        self.tokenizer = AutoTokenizer.from_pretrained(spec.model) if self.problems else None

    @staticmethod
    def _held_out_problems(spec: RunSpec) -> list:
        if spec.evaluation.problems == 0:
            return []
        try:
            return load_task(spec.task, "eval")[: spec.evaluation.problems]
        except TaskDataError as error:  # a file task without an eval split: train on, say why nothing is evaluated
            log.warning("no held-out evaluation: %s", error)
            return []

    @property
    def enabled(self) -> bool:
        return bool(self.problems)

    def due(self, completed_steps: int) -> bool:
        """After ``completed_steps`` steps: before training, every ``every`` steps, and after the last step."""
        every = self.spec.evaluation.every
        return self.enabled and (
            completed_steps in (0, self.spec.steps) or (every > 0 and completed_steps % every == 0)
        )

    def run(self, completed_steps: int, version: int) -> None:
        result = evaluate(
            self.generation,
            self.rewards,
            self.tokenizer,
            self.problems,
            max_tokens=self.spec.rollout.max_tokens,
            seed=self.spec.seed,
        )
        self.recorder.set(LEARNER_EVAL_ACCURACY, result.accuracy, **self.labels)
        self.recorder.set(LEARNER_EVAL_MEAN_REWARD, result.mean_reward, **self.labels)
        with self.log_path.open("a") as f:
            f.write(
                json.dumps(
                    {
                        "step": completed_steps,
                        "version": version,
                        "accuracy": result.accuracy,
                        "mean_reward": result.mean_reward,
                        "n": result.n,
                    }
                )
                + "\n"
            )
        log.info(
            "held-out after %d steps (version %d): accuracy %.3f of %d, mean reward %.3f",
            completed_steps,
            version,
            result.accuracy,
            result.n,
            result.mean_reward,
        )
