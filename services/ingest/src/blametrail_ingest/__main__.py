"""Composition root: settings -> logging -> producer, spool, connections table -> app -> uvicorn."""

from __future__ import annotations

import asyncio
import logging

import uvicorn
import uvloop
from blametrail_common.crypto import SecretBox
from blametrail_common.events import ConnectionStateV1
from blametrail_common.gctune import tune_gc
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.logging import configure_logging
from blametrail_common.settings import KafkaSettings, SecretsSettings

from blametrail_ingest.app import create_app
from blametrail_ingest.connections import ConnectionSecrets
from blametrail_ingest.publisher import WebhookPublisher
from blametrail_ingest.settings import IngestSettings

log = logging.getLogger("blametrail_ingest")


async def _keep_table(table: CompactedTable[ConnectionStateV1]) -> None:
    """Load the connections table, retrying while Kafka is away (ingest listens meanwhile once
    ``startup_wait_s`` has passed)."""
    while True:
        try:
            await table.start()
            return
        except Exception as exc:  # any start failure is retried; readiness reports it
            log.warning("connections table not loaded yet", extra={"error": str(exc)})
            await asyncio.sleep(2.0)


async def _loaded_within(table: CompactedTable[ConnectionStateV1], timeout_s: float) -> None:
    """Wait (bounded) for the table before binding the port: a webhook that reached us before
    it loaded could only be answered 503, and Sentry does not resend internal integrations'."""
    began = asyncio.get_running_loop().time()
    try:
        await asyncio.wait_for(table.ready.wait(), timeout_s)
    except TimeoutError:
        log.warning(
            "connections table not loaded; listening anyway (internal webhooks get 503)",
            extra={"waited_s": timeout_s},
        )
        return
    log.info(
        "connections table loaded",
        extra={"rows": len(table), "s": round(asyncio.get_running_loop().time() - began, 3)},
    )


async def serve() -> None:
    settings, kafka = IngestSettings(), KafkaSettings()
    keys = SecretsSettings().secret_keys.get_secret_value()
    publisher = WebhookPublisher.build(settings, kafka)
    table = CompactedTable(kafka, "cp-connections", ConnectionStateV1)
    app = create_app(
        settings, publisher, ConnectionSecrets(table, SecretBox(keys) if keys else None)
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http="httptools",
        limit_concurrency=settings.limit_concurrency,
        timeout_graceful_shutdown=10,
        log_config=None,
        access_log=False,
    )
    loader = asyncio.create_task(_keep_table(table))
    try:
        await _loaded_within(table, settings.startup_wait_s)
        await uvicorn.Server(config).serve()
    finally:
        loader.cancel()
        await table.stop()


def main() -> None:
    configure_logging("ingest")
    tune_gc()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())


if __name__ == "__main__":
    main()
