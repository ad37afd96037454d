"""Composition root of the enricher: settings -> logging -> tables, client, producer -> consumer loop."""

from __future__ import annotations

import asyncio

from blametrail_common.crypto import SecretBox
from blametrail_common.events import ConnectionStateV1
from blametrail_common.gctune import tune_gc
from blametrail_common.kafka import EventProducer, create_consumer, create_producer, run_batches
from blametrail_common.kafka.consumer import stop_quietly
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.logging import configure_logging
from blametrail_common.resilience import DEPENDENCIES, KAFKA, supervise
from blametrail_common.runner import run_with_health
from blametrail_common.sentry_api import AiohttpSentryApi, RetryPolicy
from blametrail_common.settings import KafkaSettings, SecretsSettings

from blametrail_enricher.credentials import ConnectionCredentials
from blametrail_enricher.http import sentry_client
from blametrail_enricher.known import KnownIncidents
from blametrail_enricher.links import BrokenLinks
from blametrail_enricher.parking import ParkingLot, ParkPolicy
from blametrail_enricher.pipeline import Enricher
from blametrail_enricher.records import Limits
from blametrail_enricher.settings import EnricherSettings


async def serve() -> None:
    settings, kafka = EnricherSettings(), KafkaSettings()
    box = SecretBox(SecretsSettings().secret_keys.get_secret_value())
    table = CompactedTable(kafka, "cp-connections", ConnectionStateV1)
    producer = EventProducer(create_producer(kafka), kafka)
    policy = RetryPolicy(
        max_attempts=settings.max_attempts, concurrency_per_org=settings.concurrency_per_org
    )
    async with sentry_client(settings) as http:
        api = AiohttpSentryApi(http, policy)
        enricher = Enricher(
            api,
            ConnectionCredentials(table, box, producer),
            producer,
            Limits(breadcrumbs=settings.breadcrumbs, max_bytes=settings.max_record_bytes),
            links=api,
            incident_url=settings.incident_url,
            lot=ParkingLot(kafka, producer),
            park_policy=ParkPolicy(
                budget_s=settings.retry_budget_s,
                base_delay_s=settings.retry_base_delay_s,
                max_delay_s=settings.retry_max_delay_s,
            ),
            batch_budget_s=settings.batch_budget_s,
            redrive_concurrency=settings.redrive_concurrency,
            concurrency=settings.concurrency,
            known=KnownIncidents(settings.known_incidents),
            broken_links=BrokenLinks(settings.link_retry_after_s),
        )
        lot = enricher.lot
        assert lot is not None

        async def prepare(_: asyncio.Event) -> None:  # retried (with backoff) until Kafka answers
            if not table.ready.is_set():
                await table.start()
            if not producer.started:
                await producer.start()
            if not lot.ready.is_set():
                await lot.stop()
                await lot.start()  # parked enrichments (see blametrail_enricher.parking)
            await enricher.warm_up(kafka)

        async def consume_once(stop: asyncio.Event) -> None:
            """One consumer's life; after any error (a broker outage, a refused send) the next
            attempt builds a new one, from the committed offsets (blametrail_common.resilience)."""
            consumer = create_consumer(kafka, ["incident-events"], settings.group_id)
            try:
                await consumer.start()
                async with asyncio.TaskGroup() as both:  # one dies: the other is cancelled
                    both.create_task(
                        run_batches(
                            consumer, enricher.handle, stop, gather_ms=kafka.batch_gather_ms
                        )
                    )
                    both.create_task(
                        enricher.redrive(
                            stop, lambda: {tp.partition for tp in consumer.assignment()}
                        )
                    )
            except ExceptionGroup as died:
                raise died.exceptions[0] from None
            finally:
                await stop_quietly(consumer)

        async def loop(stop: asyncio.Event) -> None:
            try:
                await supervise("enricher-start", prepare, stop)
                await supervise("enricher", consume_once, stop)
            finally:
                await lot.stop()
                if producer.started:
                    await producer.stop()
                await table.stop()

        async def ready() -> bool:
            return table.ready.is_set() and producer.started

        checks = {"consumer": ready, "kafka": DEPENDENCIES.check(KAFKA)}
        await run_with_health(settings.host, settings.port, checks, loop)


def main() -> None:
    configure_logging("enricher")
    tune_gc()
    asyncio.run(serve())


if __name__ == "__main__":
    main()
