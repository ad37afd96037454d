"""Dead letters go back to their source topic once, without their dlq-* headers."""

import uuid

from blametrail_common.kafka import EventProducer, create_consumer, create_producer, publish_to_dlq
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.kafka.redrive import redrive
from blametrail_common.settings import KafkaSettings


async def test_redrive_returns_dead_letters_once(kafka_settings: KafkaSettings) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"r{uuid.uuid4().hex[:6]}."
    )
    await ensure_topics(kafka)
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    try:
        await producer.send_raw("incident-events", b"k1", b"v1", [("trace", b"t")])
        reader = create_consumer(kafka, ["incident-events"], group_id=None)
        await reader.start()
        original = [r for b in (await reader.getmany(timeout_ms=3000)).values() for r in b]
        await reader.stop()
        await publish_to_dlq(producer, "incident-events-dlq", original[0], "enrichment gave up")
    finally:
        await producer.stop()
    assert (await redrive(kafka, "incident-events", dry_run=True)).redriven == 1
    first = await redrive(kafka, "incident-events")
    again = await redrive(kafka, "incident-events")
    assert (first.read, first.redriven, again.read) == (1, 1, 0)
    reader = create_consumer(kafka, ["incident-events"], group_id=None)
    await reader.start()
    try:
        records = [r for b in (await reader.getmany(timeout_ms=3000)).values() for r in b]
    finally:
        await reader.stop()
    assert [(r.key, r.value) for r in records] == [(b"k1", b"v1"), (b"k1", b"v1")]
    assert dict(records[1].headers) == {"trace": b"t"}
