"""Overhead: the share of the learner's wall time spent reading and decoding the queue and pushing weights.

Weight pushes and the learner's wall time come from the run's own metrics. Reading and decoding cannot be told
apart from waiting inside the learner (a blocking stream read returns when the awaited group arrives), so it is
measured directly: the product's ``RolloutQueue`` reading one step's groups, already in a stream of the stack's
Redis, and decoding them (as the learner's step assembler does), with nothing to wait for.
"""

from __future__ import annotations

import statistics
import time
import uuid

from pydantic import BaseModel

from benchmarks.pipeline import PipelineRun, pipeline_run, step_groups
from benchmarks.report import Table
from benchmarks.session import Session
from benchmarks.settings import OVERHEAD_STALENESS, Placement, Scale
from cfpo.queue import QueueSettings, RolloutQueue
from cfpo.rollout_group import encode_group

CONSUMER = "bench"


class QueueRead(BaseModel):
    seconds: list[float]  # reading and decoding one step's groups
    bytes_per_step: int  # the step's stream entries


class OverheadRow(BaseModel):
    run: PipelineRun
    read_decode_share: float
    weight_sync_share: float


class Overhead(BaseModel):
    queue_read: QueueRead
    rows: list[OverheadRow]


def planned_runs(scale: Scale) -> set[tuple[int, Placement]]:
    return {(m, "shared") for m in OVERHEAD_STALENESS}


def run(session: Session) -> tuple[Overhead, list[Table]]:
    runs = [pipeline_run(session, m, "shared") for m in OVERHEAD_STALENESS]
    queue_read = session.measured("queue read", lambda: _measure_queue_read(session))
    read_decode = statistics.median(queue_read.seconds)
    rows = [
        OverheadRow(
            run=r,
            read_decode_share=read_decode / r.step_seconds,
            weight_sync_share=r.weight_sync_seconds / r.step_seconds,
        )
        for r in runs
    ]
    return Overhead(queue_read=queue_read, rows=rows), [_table(session, read_decode, queue_read, rows)]


def _measure_queue_read(session: Session) -> QueueRead:
    run_id = f"bench-queue-{uuid.uuid4().hex[:8]}"
    groups = [g.model_copy(update={"run_id": run_id}) for g in step_groups(session)]
    queue = RolloutQueue(run_id, QueueSettings(redis_url=session.stack.redis_url, max_depth=len(groups)))
    seconds = []
    with session.activity(f"reading one step's groups from the stream x{session.scale.repeats}"):
        try:
            for _ in range(session.scale.repeats + 1):  # the first untimed
                for group in groups:
                    queue.append(group)
                started = time.perf_counter()
                entries = []
                while len(entries) < len(groups):
                    entries += queue.read(CONSUMER, count=len(groups))
                seconds.append(time.perf_counter() - started)
                queue.ack([e.id for e in entries])
        finally:
            queue.redis.delete(queue.keys.rollouts)
            queue.close()
    size = sum(len(key) + len(value) for group in groups for key, value in encode_group(group).items())
    return QueueRead(seconds=seconds[1:], bytes_per_step=size)


def _table(session: Session, read_decode: float, queue_read: QueueRead, rows: list[OverheadRow]) -> Table:
    table = Table(
        "Learner overhead: reading the queue and pushing weights",
        [
            "max staleness",
            "learner s/step",
            "busy s",
            "wait s",
            "read + decode s",
            "weight push s",
            "read + decode share",
            "weight push share",
        ],
        caption=(
            f"Steady-state means per step of the shared-placement runs (as in the async-vs-sync table). "
            f"read + decode: the product's RolloutQueue reading and decoding one step's groups "
            f"({queue_read.bytes_per_step / 1024:.1f} KiB on the stream) with nothing to wait for, median of "
            f"{len(queue_read.seconds)}; the learner's wait includes it. weight push: staging the weights "
            "(rewritten in place), then pause, load and resume in generation, as the learner recorded it. "
            "Shares are of the learner's wall time per step."
        ),
    )
    for row in rows:
        r = row.run
        table.add(
            r.max_staleness,
            r.step_seconds,
            r.learner_train_seconds,
            r.learner_wait_seconds,
            read_decode,
            r.weight_sync_seconds,
            f"{row.read_decode_share:.2%}",
            f"{row.weight_sync_share:.1%}",
        )
    return table
