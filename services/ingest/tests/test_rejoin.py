"""Back from the spool to Kafka while webhooks keep coming (issue 19): a healthy broker gets the
traffic again once the spool is forwarded, instead of the whole storm going through the spool;
nothing lost, each key's records in order."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from pathlib import Path

from blametrail_common.kafka import EventProducer, create_producer
from blametrail_common.settings import KafkaSettings
from blametrail_devstack.ingest_testing import RawTopic
from blametrail_ingest.publisher import WebhookPublisher
from blametrail_ingest.spool import Spool

SENDERS, EACH, BACKLOG = 50, 40, 5000


async def test_under_sustained_load_the_spooled_backlog_drains_and_kafka_takes_over(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:6].encode()
    spool = Spool(tmp_path / "spool", 10**8)
    # An earlier slow ack left a backlog: before the fix, every record behind it was spooled for
    # as long as webhooks kept coming (the spool was never empty).
    await spool.append_many(
        [(b"%s-k%d" % (run, i % SENDERS), b"backlog-%d" % i) for i in range(BACKLOG)]
    )
    publisher = WebhookPublisher(
        EventProducer(create_producer(kafka_settings, linger_ms=0), kafka_settings), spool, 2.0
    )
    landed: list[str] = []
    async with RawTopic(kafka_settings) as raw:
        await publisher.start()
        try:

            async def sender(n: int) -> None:
                for i in range(EACH):
                    landed.append(await publisher.publish(b"%s-k%d" % (run, n), b"live-%d" % i))

            await asyncio.wait_for(asyncio.gather(*(sender(n) for n in range(SENDERS))), 60)
            assert await publisher.drained(timeout_s=30)
            records = await raw.read(BACKLOG + SENDERS * EACH, timeout_s=60)
        finally:
            await publisher.stop()
    assert landed[-SENDERS * 10 :].count("kafka") == SENDERS * 10  # the storm's end: all Kafka
    per_key: dict[bytes, list[bytes]] = defaultdict(list)
    for r in records:
        if r.key is not None and r.key.startswith(run) and r.value is not None:
            per_key[r.key].append(r.value)
    assert len(per_key) == SENDERS
    for n in range(SENDERS):
        values = per_key[b"%s-k%d" % (run, n)]
        backlog = [v for v in values if v.startswith(b"backlog")]
        live = [v for v in values if v.startswith(b"live")]
        assert values == backlog + live  # every spooled record of a key before its live ones
        assert live == [b"live-%d" % i for i in range(EACH)]  # in order, none lost or doubled
        assert backlog == [b"backlog-%d" % i for i in range(n, BACKLOG, SENDERS)]
