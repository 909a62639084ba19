"""The reaper: a background task of the API that ends runs whose worker stopped heartbeating.

Any number of API processes may run it: each pass is one atomic script in Redis, so a run is reaped once.
"""

from __future__ import annotations

import asyncio
import logging

import redis

from cfpo.metrics import CONTROL_RUNS_REAPED, Recorder
from cfpo.registry import RunRegistry

log = logging.getLogger("cfpo.control")


async def reap_forever(registry: RunRegistry, timeout_s: float, interval_s: float, recorder: Recorder) -> None:
    while True:
        try:
            for run_id in await asyncio.to_thread(registry.reap, timeout_s):
                log.warning("run %s: its worker sent no heartbeat for %s s; ended", run_id, timeout_s)
                recorder.inc(CONTROL_RUNS_REAPED)
        except redis.RedisError as error:  # Redis away for a while: try again next time
            log.error("reaper: %s", error)
        await asyncio.sleep(interval_s)
