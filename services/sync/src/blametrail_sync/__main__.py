"""Composition root of the write-back worker (``python -m blametrail_sync``): settings -> logging
-> connections table, Sentry client, producer -> the write-back loop into Postgres, beside the
health server.

Offsets: the winners, the write-backs made and the consumer's offsets are committed in one
Postgres transaction (:func:`~blametrail_common.kafka.pgsink.project_into_postgres`), after
every event of the batch was acknowledged by the broker; the loop starts over with a backoff
when Kafka or Postgres goes away, from the offsets stored in Postgres.
"""

from __future__ import annotations

import asyncio

import httpx
from blametrail_common.crypto import SecretBox
from blametrail_common.events import ConnectionStateV1
from blametrail_common.gctune import tune_gc
from blametrail_common.kafka import EventProducer, create_producer
from blametrail_common.kafka.pgsink import project_into_postgres
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.logging import configure_logging
from blametrail_common.resilience import DEPENDENCIES, KAFKA, POSTGRES, supervise
from blametrail_common.runner import run_with_health
from blametrail_common.sentry_api import HttpxSentryApi, RetryPolicy
from blametrail_common.sentry_credentials import ConnectionCredentials
from blametrail_common.settings import KafkaSettings, PostgresSettings, SecretsSettings
from blametrail_common.topics import topic_name

from blametrail_sync.settings import SyncSettings
from blametrail_sync.worker import WriteBacks


def policy_of(settings: SyncSettings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.max_attempts,
        max_rate_limit_wait_s=settings.max_rate_limit_wait_s,
        timeout_s=settings.timeout_s,
    )


async def serve() -> None:
    settings, kafka, dsn = SyncSettings(), KafkaSettings(), PostgresSettings().database_url
    box = SecretBox(SecretsSettings().secret_keys.get_secret_value())
    table = CompactedTable(kafka, "cp-connections", ConnectionStateV1)
    producer = EventProducer(create_producer(kafka), kafka)
    topics = [topic_name("incident-events", kafka.topic_prefix)]
    async with httpx.AsyncClient() as http:
        worker = WriteBacks(
            HttpxSentryApi(http, policy_of(settings)),
            table,
            ConnectionCredentials(table, box, producer),
            producer,
            concurrency=settings.concurrency,
        )

        async def prepare(_: asyncio.Event) -> None:  # retried (with backoff) until Kafka answers
            if not table.ready.is_set():
                await table.start()  # the connections (setting, token) before any decision
            if not producer.started:
                await producer.start()

        async def loop(stop: asyncio.Event) -> None:
            try:
                await supervise("sync-start", prepare, stop)
                await project_into_postgres(
                    kafka,
                    topics,
                    dsn,
                    settings.group_id,
                    worker.apply,
                    stop,
                    name="sync",
                    max_records=settings.batch_max,
                )
            finally:
                if producer.started:
                    await producer.stop()
                await table.stop()

        async def ready() -> bool:
            return table.ready.is_set() and producer.started

        checks = {
            "writebacks": ready,
            "kafka": DEPENDENCIES.check(KAFKA),
            "postgres": DEPENDENCIES.check(POSTGRES),
        }
        await run_with_health(settings.host, settings.port, checks, loop)


def main() -> None:
    configure_logging("sync")
    tune_gc()
    asyncio.run(serve())


if __name__ == "__main__":
    main()
