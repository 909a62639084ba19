"""The reaper: a background task of the API that requeues (or, past their restarts, fails) runs whose worker
stopped heartbeating, and deletes the queues of runs that ended longer ago than their retention.

Any number of API processes may run it: each pass is one atomic script in Redis, so a run is reaped once.
"""

from __future__ import annotations

import asyncio
import logging

import redis

from cfpo.metrics import CONTROL_RUNS_REAPED, Recorder
from cfpo.registry import RunRegistry
from services.control.settings import ControlSettings

log = logging.getLogger("cfpo.control")


async def reap_forever(registry: RunRegistry, settings: ControlSettings, recorder: Recorder) -> None:
    timeout_s, retention_s = settings.heartbeat_timeout_s, settings.ended_run_retention_s
    while True:
        try:
            for run_id, outcome in await asyncio.to_thread(registry.reap, timeout_s, settings.max_restarts):
                log.warning("run %s: its worker sent no heartbeat for %s s; %s", run_id, timeout_s, outcome)
                recorder.inc(CONTROL_RUNS_REAPED, outcome=outcome)
            for run_id in await asyncio.to_thread(registry.drop_ended_queues, retention_s):
                log.info("run %s: ended over %s s ago; its queue and dead letters deleted", run_id, retention_s)
        except redis.RedisError as error:  # Redis away for a while: try again next time
            log.error("reaper: %s", error)
        await asyncio.sleep(settings.reap_interval_s)
