"""``python -m blametrail_enricher.projector``: the Postgres projection as its own process."""

from __future__ import annotations

import asyncio

import psycopg
from blametrail_common.kafka import EventProducer, create_consumer, create_producer
from blametrail_common.kafka.pgsink import run_into_postgres
from blametrail_common.logging import configure_logging
from blametrail_common.runner import run_with_health
from blametrail_common.settings import KafkaSettings, PostgresSettings
from blametrail_common.topics import topic_name

from blametrail_enricher.projection import PROJECTED_TOPICS, Projection
from blametrail_enricher.settings import ProjectionSettings


async def serve() -> None:
    settings, kafka, dsn = ProjectionSettings(), KafkaSettings(), PostgresSettings().database_url
    producer = EventProducer(create_producer(kafka), kafka)
    consumer = create_consumer(kafka, [], settings.group_id)
    projection = Projection(producer)

    async def loop(stop: asyncio.Event) -> None:
        await producer.start()
        await consumer.start()
        try:
            topics = [topic_name(t, kafka.topic_prefix) for t in PROJECTED_TOPICS]
            await run_into_postgres(
                consumer, topics, dsn, settings.group_id, projection.apply, stop
            )
        finally:
            await consumer.stop()
            await producer.stop()

    async def ready() -> bool:
        async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=2) as conn:
            await conn.execute("SELECT 1")
        return producer.started

    await run_with_health(settings.host, settings.port, {"postgres": ready}, loop)


def main() -> None:
    configure_logging("projection")
    asyncio.run(serve())


if __name__ == "__main__":
    main()
