"""The rollout worker: prompts -> generation -> reward -> group advantages -> the run's stream.

Each group is reserved a slot; the worker generates it only when staleness admission control allows, so the
learner never consumes data older than the run permits, and nothing generated is thrown away for lateness.
Several workers may serve one run: slots are leased to them (``services.rollout.leases``), prompts handed out by
a Redis counter. A worker that dies loses no slot: its leases run out and another worker fills them.

Concurrency: a worker runs ``spec.inflight_groups`` lanes, threads that each take a slot, pick a generation server
(the one with the fewest lanes on it), wait for that server's admission, generate there, score and append it, then
take the next. So vLLM sees every admitted group's request at
once and batches them, and one group's scoring overlaps the others' generation. The lanes share the clients
(httpx and redis-py pools are thread-safe) and the tokenizer (behind a lock).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

from cfpo.clients import Retry
from cfpo.clients.generation import GenerationClient, GenerationError, GenerationPool, PolicyVersion
from cfpo.clients.reward import RewardClient, RewardError
from cfpo.metrics import (
    ROLLOUT_ERRORS,
    ROLLOUT_GROUPS,
    ROLLOUT_STAGE_SECONDS,
    ROLLOUT_ZERO_VARIANCE,
    PrometheusRecorder,
)
from cfpo.queue import RolloutQueue
from cfpo.rollout_group import RolloutGroup
from cfpo.run_spec import RunSpec
from cfpo.staleness import may_generate, within_bound
from cfpo.tasks import Problem, batches, load_task, render_prompt
from services.rollout.group import decoded, sample_completions, score_answers, weighed_samples
from services.rollout.leases import SlotLeases

log = logging.getLogger("cfpo.rollout")
T = TypeVar("T")

MAX_ZERO_VARIANCE_REPLACEMENTS = 8  # then keep the group (zero advantages) rather than starve the learner
ADMISSION_POLL_SECONDS = 0.05
SLOT_POLL_SECONDS = 1.0  # how often a lane with no free slot asks again


class ForeignWeights(RuntimeError):
    """Completions came (in part) from weights that are not this run's."""


class OutOfBound(RuntimeError):
    """Completions came from policy versions the run's staleness bound does not allow for their slot."""


class RolloutWorker:
    def __init__(
        self,
        spec: RunSpec,
        run_id: str,
        queue: RolloutQueue,
        generation: GenerationPool,
        rewards: RewardClient,
        recorder: PrometheusRecorder,
        *,
        retry: Retry = Retry(),
        still_wanted: Callable[[], bool] = lambda: True,
    ):
        from transformers import AutoTokenizer

        self.spec, self.run_id, self.queue = spec, run_id, queue
        self.generation, self.rewards, self.recorder, self.retry = generation, rewards, recorder, retry
        self.tokenizer = AutoTokenizer.from_pretrained(spec.model)
        self._tokenizer_lock = threading.Lock()  # a Rust tokenizer refuses concurrent use ("Already borrowed")
        self.problems = load_task(spec.task, "train")
        self.stop = threading.Event()
        self._served = {client.base_url: self._version_of(client) for client in generation.clients}
        self.still_wanted = still_wanted  # asked about once a second while waiting: False ends the work on this run

    @property
    def total_slots(self) -> int:
        return self.spec.steps * self.spec.rollout.prompts_per_step

    def run(self) -> int:
        """Fill slots until the run has all it needs (or ``stop`` is set); returns how many groups this worker made.

        The first lane to fail stops the others (each finishes the call it is in) and its error is raised."""
        lanes = self.spec.inflight_groups
        with (
            SlotLeases(self.queue, self.total_slots) as leases,
            ThreadPoolExecutor(max_workers=lanes, thread_name_prefix=f"rollout-{self.run_id}") as pool,
        ):
            futures = [pool.submit(self._lane, leases) for _ in range(lanes)]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            if any(future.exception() for future in done):
                self.stop.set()
        return sum(future.result() for future in futures)

    def _lane(self, leases: SlotLeases) -> int:
        """One group in flight at a time: lease a slot, fill it, append it; returns the groups it made.

        With no slot free, it waits while any is unfilled: a lease that runs out (a dead worker's) comes back."""
        made = 0
        while not self.stop.is_set():
            slot = leases.reserve()
            if slot is None:
                if leases.all_filled():
                    break
                self._pause(SLOT_POLL_SECONDS)
                continue
            group = self.fill(slot, leases)
            if group is None:
                break
            self.queue.append(group)
            leases.filled(group.slot)
            self.recorder.inc(ROLLOUT_GROUPS, run=self.run_id)
            made += 1
        return made

    def _pause(self, seconds: float) -> None:
        """Wait, unless the run ended meanwhile (then stop)."""
        if self.still_wanted():
            self.stop.wait(seconds)
        else:
            self.stop.set()

    def fill(self, slot: int, leases: SlotLeases) -> RolloutGroup | None:
        """Generate, score and weigh one group for ``slot`` (or a lower one it trades it for while waiting for
        admission); replaces zero-variance groups if the run says so."""
        discarded = 0
        while True:
            with self.generation.least_busy() as server:
                slot, waited = self._wait_for_admission(slot, server, leases)
                timings = {"admission_wait": waited}
                if self.stop.is_set():
                    return None
                problem = self._problem(self.queue.reserve_prompt())
                try:
                    group = self._scored_group(slot, problem, timings, discarded, server)
                except (ForeignWeights, OutOfBound) as error:
                    log.warning("%s; generating the slot again", error)
                    stage = "foreign_weights" if isinstance(error, ForeignWeights) else "staleness_bound"
                    self.recorder.inc(ROLLOUT_ERRORS, run=self.run_id, stage=stage)
                    continue
            if not group.zero_variance or not self.spec.rollout.drop_zero_variance:
                return group
            if discarded >= MAX_ZERO_VARIANCE_REPLACEMENTS:
                self.recorder.inc(ROLLOUT_ZERO_VARIANCE, run=self.run_id, action="kept")
                return group
            discarded += 1
            self.recorder.inc(ROLLOUT_ZERO_VARIANCE, run=self.run_id, action="replaced")

    def _wait_for_admission(self, slot: int, server: GenerationClient, leases: SlotLeases) -> tuple[int, float]:
        """Wait until ``server`` serves this run's weights at a version allowed to generate the slot; returns the
        slot (``slot``, or a dead worker's lower one taken meanwhile) and the seconds waited."""
        started = last_asked = time.perf_counter()
        while not self.stop.is_set():
            served = self._served[server.base_url].get()
            if served.run == self.run_id and may_generate(self.spec, slot, served.number):
                break
            if time.perf_counter() - last_asked > 1.0:
                last_asked = time.perf_counter()
                if not self.still_wanted():
                    self.stop.set()
                slot = leases.trade_down(slot)
                self._ask_for_push_if_behind(server, served)
            time.sleep(ADMISSION_POLL_SECONDS)
        return slot, time.perf_counter() - started

    def _ask_for_push_if_behind(self, server: GenerationClient, served: PolicyVersion) -> None:
        """A server on its base weights (it restarted) or on an older version of this run than the learner published
        admits nothing until the learner pushes again, and a learner waiting for data pushes nothing: ask it to."""
        published = self.queue.current_version()
        if published is None or not (served.run is None or (served.run == self.run_id and served.number < published)):
            return
        what = "its base weights" if served.run is None else f"version {served.number}"
        log.warning("%s serves %s, the learner published %d: asking it to push again", server.base_url, what, published)
        self.queue.ask_for_push(f"{server.base_url} serves {what}, not version {published}")

    def _version_of(self, server: GenerationClient) -> _ServedVersion:
        return _ServedVersion(lambda: self._with_retries("version", server.version))

    def _problem(self, index: int) -> Problem:
        return next(batches(self.problems, 1, seed=self.spec.seed, start_index=index))[0]

    def _scored_group(
        self, slot: int, problem: Problem, timings: dict[str, float], discarded: int, server: GenerationClient
    ) -> RolloutGroup:
        with self._tokenizer_lock:
            prompt = render_prompt(self.tokenizer, problem.prompt)
        started = time.perf_counter()
        seed = self.spec.seed * 1_000_003 + slot * 101 + discarded
        completions = self._with_retries(
            "generate",
            lambda: sample_completions(
                server, self.spec, prompt.token_ids, seed=seed, eos_token_id=self.tokenizer.eos_token_id
            ),
        )
        timings["generate"] = time.perf_counter() - started
        if any(c.runs != (self.run_id,) for c in completions):
            # Another run's weights were loaded while this group was generated (a shared server): not our policy.
            raise ForeignWeights(f"slot {slot}: generated by weights of {sorted(map(str, completions[0].runs))}")
        versions = min(c.min_version for c in completions), max(c.max_version for c in completions)
        if not within_bound(self.spec, slot, *versions):
            raise OutOfBound(
                f"slot {slot}: generated by versions {versions[0]}-{versions[1]}, outside the run's "
                "staleness bound (weights changed after its admission)"
            )
        started = time.perf_counter()
        with self._tokenizer_lock:
            texts = decoded(self.tokenizer, completions)
        rewards = self._with_retries("reward", lambda: score_answers(self.rewards, self.spec, problem, texts))
        timings["reward"] = time.perf_counter() - started
        for stage, seconds in timings.items():
            self.recorder.observe(ROLLOUT_STAGE_SECONDS, seconds, run=self.run_id, stage=stage)
        samples = weighed_samples(self.spec, prompt.token_ids, completions, rewards)
        log.info(
            "slot %d: prompt %s, rewards mean %.3f sd %.3f, versions %d-%d",
            slot,
            problem.id,
            statistics.fmean(rewards),
            statistics.pstdev(rewards),
            min(s.min_version for s in samples),
            max(s.max_version for s in samples),
        )
        return RolloutGroup(
            run_id=self.run_id,
            prompt_id=problem.id,
            slot=slot,
            samples=samples,
            zero_variance_discarded=discarded,
            timings=timings,
        )

    def _with_retries(self, stage: str, call: Callable[[], T]) -> T:
        """Retry a failed generation or reward call with exponential backoff; each call has its own timeout."""
        return self.retry.call(
            stage,
            call,
            (GenerationError, RewardError),
            lambda _: self.recorder.inc(ROLLOUT_ERRORS, run=self.run_id, stage=stage),
        )


class _ServedVersion:
    """The version generation serves, asked at most once per poll interval however many lanes wait on it."""

    def __init__(self, ask: Callable[[], PolicyVersion]):
        self._ask, self._lock = ask, threading.Lock()
        self._value: PolicyVersion | None = None
        self._asked_at = float("-inf")

    def get(self) -> PolicyVersion:
        with self._lock:
            if time.perf_counter() - self._asked_at >= ADMISSION_POLL_SECONDS or self._value is None:
                self._value, self._asked_at = self._ask(), time.perf_counter()
            return self._value
