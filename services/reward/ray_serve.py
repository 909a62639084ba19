"""The reward app as Ray Serve replicas (``--ray --replicas N``): Ray places, restarts and load-balances them.

Each replica builds the same FastAPI app with its own verifier pool and reserves ``pool_size`` CPUs. Metrics go
through Ray's metrics agent (``cfpo.metrics.RayRecorder``), since a per-process counter would only count the
replica that answers a scrape. Without ``ray_address`` a local Ray is started just large enough for the replicas,
without its dashboard, and stopped on SIGINT/SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import cast

# Read by the Ray processes started below: all their ports but the replicas' gRPC one listen on loopback only.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray
from ray import serve

from cfpo.metrics import REWARD_METRICS, RayRecorder
from services.reward.app import create_app
from services.reward.settings import RewardSettings

APP_NAME = "reward"


@serve.deployment
@serve.ingress()
class RewardReplica:
    def __init__(self, settings: RewardSettings):
        self._settings = settings

    def __serve_build_asgi_app__(self):
        self._app = create_app(self._settings, RayRecorder(REWARD_METRICS))
        return self._app

    def check_health(self) -> None:
        """Serve replaces a replica whose verifier pool has broken."""
        pool = getattr(self._app.state, "pool", None)  # absent until the app's start-up has run
        if pool is not None and not pool.alive:
            raise RuntimeError("verifier pool is down")


def serve_with_ray(settings: RewardSettings) -> None:
    """Run the replicas until SIGINT or SIGTERM, then take them down (and the local Ray, if started here)."""
    local = settings.ray_address is None
    ray.init(
        address=settings.ray_address,
        num_cpus=settings.replicas * settings.pool_size if local else None,
        include_dashboard=False if local else None,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # after ray.init, whose SIGTERM handler would exit with 15
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        # mypy keeps a decorated class's own type; @serve.deployment has made it a Deployment
        replicas = cast(serve.Deployment, RewardReplica).options(
            num_replicas=settings.replicas, ray_actor_options={"num_cpus": settings.pool_size}
        )
        serve.run(replicas.bind(settings), name=APP_NAME, route_prefix="/")
        print(
            f"reward service: {settings.replicas} Ray Serve replica(s) at http://{settings.host}:{settings.port}",
            flush=True,
        )
        stop.wait()
    finally:
        serve.delete(APP_NAME)
        ray.shutdown()
