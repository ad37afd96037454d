"""Composition root: settings -> logging -> Kafka reachable -> faust app -> health server task ->
faust worker.

faust's worker exits when it cannot bootstrap from the cluster, so the process first waits for
Kafka (capped, jittered backoff, :func:`blametrail_common.resilience.supervise`) while serving
``/healthz`` and a ``/readyz`` that names ``kafka``: a broker that is down when the normalizer
starts delays it, never crash-loops it. Once running, faust's consumer and producer reconnect by
themselves; anything that still ends the worker ends the process, and the supervisor (Kubernetes,
``make up``) starts it again.
"""

from __future__ import annotations

import asyncio
import sys

import faust
import uvicorn
from aiokafka.admin import AIOKafkaAdminClient
from blametrail_common.gctune import tune_gc
from blametrail_common.health import health_routes
from blametrail_common.logging import configure_logging
from blametrail_common.resilience import supervise
from blametrail_common.runner import run_with_health
from blametrail_common.settings import KafkaSettings
from starlette.applications import Starlette

from blametrail_normalizer.app import create_app
from blametrail_normalizer.settings import NormalizerSettings


async def wait_for_kafka(settings: NormalizerSettings, kafka: KafkaSettings) -> bool:
    """Until the cluster answers a metadata request (True), or SIGTERM (False)."""
    reached = asyncio.Event()

    async def probe(_: asyncio.Event) -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=kafka.client_id,
            request_timeout_ms=3000,
        )
        try:
            await admin.start()
            await admin.describe_cluster()
        finally:
            await admin.close()
        reached.set()

    async def loop(stop: asyncio.Event) -> None:
        await supervise("normalizer-start", probe, stop)

    async def kafka_ok() -> bool:
        return reached.is_set()

    await run_with_health(settings.host, settings.port, {"kafka": kafka_ok}, loop, grace_s=5)
    return reached.is_set()


def main() -> None:
    configure_logging("normalizer")
    tune_gc()
    settings, kafka = NormalizerSettings(), KafkaSettings()
    if not asyncio.run(wait_for_kafka(settings, kafka)):
        sys.exit(0)  # stopped before Kafka answered
    normalizer = create_app(settings, kafka)

    async def ready() -> bool:
        return normalizer.ready()

    health = Starlette(routes=health_routes({"tables_and_producer": ready}))

    @normalizer.app.task  # type: ignore[untyped-decorator]
    async def _health_server() -> None:
        config = uvicorn.Config(
            health, host=settings.host, port=settings.port, log_config=None, access_log=False
        )
        await uvicorn.Server(config).serve()

    faust.Worker(normalizer.app, loglevel="INFO", redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
