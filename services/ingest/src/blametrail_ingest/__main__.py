"""Composition root: settings -> logging -> producer, spool, connections table -> app -> uvicorn."""

from __future__ import annotations

import asyncio
import logging

import uvicorn
import uvloop
from blametrail_common.crypto import SecretBox
from blametrail_common.events import ConnectionStateV1
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.logging import configure_logging
from blametrail_common.settings import KafkaSettings, SecretsSettings

from blametrail_ingest.app import create_app
from blametrail_ingest.connections import ConnectionSecrets
from blametrail_ingest.publisher import WebhookPublisher
from blametrail_ingest.settings import IngestSettings

log = logging.getLogger("blametrail_ingest")


async def _keep_table(table: CompactedTable[ConnectionStateV1]) -> None:
    """Load the connections table, retrying while Kafka is away (ingest serves meanwhile)."""
    while True:
        try:
            await table.start()
            return
        except Exception as exc:  # any start failure is retried; readiness reports it
            log.warning("connections table not loaded yet", extra={"error": str(exc)})
            await asyncio.sleep(2.0)


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
        await uvicorn.Server(config).serve()
    finally:
        loader.cancel()
        await table.stop()


def main() -> None:
    configure_logging("ingest")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())


if __name__ == "__main__":
    main()
