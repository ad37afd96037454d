"""``python -m blametrail_suspects``: the suspects worker with its health/metrics server.

Its loop heals itself: a broker outage (a commit refused after the rebalance it causes, a send
that times out) replaces the consumer after a backoff and the batch is read again (effects are
idempotent: deterministic suspects events); the incident memory stays.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from blametrail_common.gctune import tune_gc
from blametrail_common.kafka import EventProducer, consume, create_producer
from blametrail_common.logging import configure_logging
from blametrail_common.resilience import DEPENDENCIES, KAFKA, supervise
from blametrail_common.runner import run_with_health
from blametrail_common.settings import KafkaSettings

from blametrail_suspects.settings import SuspectsSettings
from blametrail_suspects.state import SuspectState
from blametrail_suspects.worker import INPUTS, SuspectsWorker


async def serve() -> None:
    settings, kafka = SuspectsSettings(), KafkaSettings()
    state = SuspectState(settings.max_incidents, timedelta(hours=settings.lookback_hours))
    producer = EventProducer(create_producer(kafka), kafka)
    worker = SuspectsWorker(state, producer)
    mappings = worker.follow_mappings(kafka)
    loaded = asyncio.Event()

    async def prepare(_: asyncio.Event) -> None:
        """Producer, mappings, deploys and the warm-up; retried as a whole until they succeed
        (a part already done is not done again)."""
        if not producer.started:
            await producer.start()
        if not mappings.ready.is_set():
            await mappings.start()
        await worker.load_deploys(kafka)
        await worker.warm_up(kafka, settings.group_id)

    async def loop(stop: asyncio.Event) -> None:
        try:
            await supervise("suspects-start", prepare, stop)
            loaded.set()
            # A new consumer after any error (a broker outage, a refused send), with backoff.
            await consume(kafka, INPUTS, settings.group_id, worker.handle, stop, name="suspects")
        finally:
            await mappings.stop()
            if producer.started:
                await producer.stop()

    async def ready() -> bool:
        return loaded.is_set() and producer.started

    checks = {"consumer": ready, "kafka": DEPENDENCIES.check(KAFKA)}
    await run_with_health(settings.host, settings.port, checks, loop)


def main() -> None:
    configure_logging("suspects")
    tune_gc()
    asyncio.run(serve())


if __name__ == "__main__":
    main()
