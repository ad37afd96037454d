"""``python -m blametrail_suspects``: the suspects worker with its health/metrics server."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from blametrail_common.kafka import EventProducer, create_consumer, create_producer, run_batches
from blametrail_common.logging import configure_logging
from blametrail_common.runner import run_with_health
from blametrail_common.settings import KafkaSettings

from blametrail_suspects.settings import SuspectsSettings
from blametrail_suspects.state import SuspectState
from blametrail_suspects.worker import INPUTS, SuspectsWorker


async def serve() -> None:
    settings, kafka = SuspectsSettings(), KafkaSettings()
    state = SuspectState(settings.max_incidents, timedelta(hours=settings.lookback_hours))
    producer = EventProducer(create_producer(kafka), kafka)
    consumer = create_consumer(kafka, INPUTS, settings.group_id)
    worker = SuspectsWorker(state, producer)
    mappings = worker.follow_mappings(kafka)
    loaded = asyncio.Event()

    async def loop(stop: asyncio.Event) -> None:
        await producer.start()
        await mappings.start()
        await worker.load_deploys(kafka)
        await worker.warm_up(kafka, settings.group_id)
        loaded.set()
        await consumer.start()
        try:
            await run_batches(consumer, worker.handle, stop)
        finally:
            await consumer.stop()
            await mappings.stop()
            await producer.stop()

    async def ready() -> bool:
        return loaded.is_set() and producer.started

    await run_with_health(settings.host, settings.port, {"consumer": ready}, loop)


def main() -> None:
    configure_logging("suspects")
    asyncio.run(serve())


if __name__ == "__main__":
    main()
