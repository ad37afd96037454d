"""Composition root of the projector (``python -m blametrail_projector``): settings -> logging ->
producer (dead letters) -> the projection loop into Postgres, beside the health server.

The projection loop heals itself (:func:`~blametrail_common.kafka.pgsink.project_into_postgres`):
when Postgres or Kafka goes away it starts over with a backoff and resumes from the offsets stored
in Postgres; ``/readyz`` names the dependency that is away meanwhile.
"""

from __future__ import annotations

import asyncio

from blametrail_common.gctune import tune_gc
from blametrail_common.kafka import EventProducer, create_producer
from blametrail_common.kafka.pgsink import project_into_postgres
from blametrail_common.logging import configure_logging
from blametrail_common.resilience import DEPENDENCIES, KAFKA, POSTGRES, supervise
from blametrail_common.runner import run_with_health
from blametrail_common.settings import KafkaSettings, PostgresSettings
from blametrail_common.topics import topic_name

from blametrail_projector.projection import PROJECTED_TOPICS, Projection
from blametrail_projector.settings import ProjectorSettings


async def serve() -> None:
    settings, kafka, dsn = ProjectorSettings(), KafkaSettings(), PostgresSettings().database_url
    producer = EventProducer(create_producer(kafka), kafka)
    projection = Projection(producer)
    topics = [topic_name(t, kafka.topic_prefix) for t in PROJECTED_TOPICS]

    async def start_producer(_: asyncio.Event) -> None:
        await producer.start()

    async def loop(stop: asyncio.Event) -> None:
        await supervise("projection-producer", start_producer, stop)
        try:
            await project_into_postgres(
                kafka,
                topics,
                dsn,
                settings.group_id,
                projection.apply,
                stop,
                name="projection",
                ahead=projection.ahead,
            )
        finally:
            if producer.started:
                await producer.stop()

    checks = {"kafka": DEPENDENCIES.check(KAFKA), "postgres": DEPENDENCIES.check(POSTGRES)}
    await run_with_health(settings.host, settings.port, checks, loop)


def main() -> None:
    configure_logging("projection")
    tune_gc()
    asyncio.run(serve())


if __name__ == "__main__":
    main()
