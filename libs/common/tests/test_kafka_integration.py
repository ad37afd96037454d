"""Round trips through the real broker: codec, keys, headers, DLQ, topic reconciliation."""

import asyncio
import uuid

import pytest
from aiokafka.structs import TopicPartition
from blametrail_common.events import WebhookReceivedV1, decode, new_event
from blametrail_common.kafka import EventProducer, create_consumer, create_producer, publish_to_dlq
from blametrail_common.kafka.admin import admin_client, describe_topic_configs, ensure_topics
from blametrail_common.kafka.consumer import poll_batch
from blametrail_common.metrics import DEAD_LETTERS
from blametrail_common.settings import KafkaSettings
from blametrail_common.topics import TOPICS, topic_name


def _raw(body: str) -> WebhookReceivedV1:
    return WebhookReceivedV1(
        connection_id=None,
        resource="issue",
        action="created",
        installation_uuid="inst",
        signature_header="Sentry-Hook-Signature",
        request_id="r1",
        hook_timestamp="1",
        received_at="2026-01-01T00:00:00Z",
        body_sha256="0" * 64,
        body=body,
    )


async def _read(settings: KafkaSettings, topic: str, n: int, key: bytes | None = None) -> list:
    """At least ``n`` records of ``topic`` (with ``key``, if given: other modules share topics)."""
    consumer = create_consumer(settings, [topic], group_id=None)
    await consumer.start()
    try:
        out: list = []
        for _ in range(40):
            polled = await consumer.getmany(timeout_ms=500)
            out.extend(r for batch in polled.values() for r in batch if key is None or r.key == key)
            if len(out) >= n:
                return out
        return out
    finally:
        await consumer.stop()


@pytest.fixture
async def producer(kafka_settings: KafkaSettings):
    p = EventProducer(create_producer(kafka_settings), kafka_settings)
    await p.start()
    yield p
    await p.stop()


async def test_produce_consume_round_trip_keeps_key_headers_and_event(
    kafka_settings: KafkaSettings, producer: EventProducer
) -> None:
    body = '{"action":"created","data":{"x":"\\u20ac"}}'
    key = f"issue-{uuid.uuid4()}"  # unique: other modules publish the fixture's issue id here
    event = new_event(_raw(body), key=key, tenant=None)
    meta = await producer.send("sentry-webhooks-raw", event, headers=[("trace", b"abc")])
    assert meta.offset >= 0
    mine = await _read(kafka_settings, "sentry-webhooks-raw", 1, key=key.encode())
    assert len(mine) == 1
    record = mine[0]
    assert decode(record.value) == event
    assert decode(record.value).payload.body.encode() == body.encode()
    headers = dict(record.headers)
    assert headers["trace"] == b"abc"
    assert headers["bt-type"] == b"sentry.webhook.received"
    assert headers["bt-version"] == b"1"


async def test_dead_letter_keeps_bytes_and_says_why(
    kafka_settings: KafkaSettings, producer: EventProducer
) -> None:
    await producer.send_raw("incident-events", b"poison", b"\xff not an event", [("h", b"1")])
    source = (await _read(kafka_settings, "incident-events", 1, key=b"poison"))[0]
    counted = DEAD_LETTERS.labels("incident-events-dlq")._value.get()
    await publish_to_dlq(producer, "incident-events-dlq", source, "cannot decode", ValueError("x"))
    assert DEAD_LETTERS.labels("incident-events-dlq")._value.get() == counted + 1
    dead = (await _read(kafka_settings, "incident-events-dlq", 1))[-1]
    assert dead.value == b"\xff not an event"
    assert dead.key == b"poison"
    headers = dict(dead.headers)
    assert headers["dlq-reason"] == b"cannot decode"
    assert headers["dlq-error-type"] == b"ValueError"
    assert headers["dlq-source-topic"] == source.topic.encode()
    assert headers["dlq-source-offset"] == str(source.offset).encode()
    assert headers["h"] == b"1"


async def test_topics_ensure_twice_is_a_no_op_and_compaction_is_real(
    kafka_settings: KafkaSettings,
) -> None:
    settings = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"e{uuid.uuid4().hex[:6]}."
    )
    first = await ensure_topics(settings)
    assert {c.action for c in first} == {"created"}
    assert len(first) == len(TOPICS)
    second = await ensure_topics(settings)
    assert {c.action for c in second} == {"unchanged"}

    admin = admin_client(settings)
    await admin.start()
    try:
        names = [topic_name(t.name, settings.topic_prefix) for t in TOPICS]
        configs = await describe_topic_configs(admin, names)
        described = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
    finally:
        await admin.close()
    for spec in TOPICS:
        name = topic_name(spec.name, settings.topic_prefix)
        assert configs[name]["cleanup.policy"] == spec.cleanup_policy
        assert described[name] == spec.partitions
    assert configs[f"{settings.topic_prefix}cp-mappings"]["cleanup.policy"] == "compact"


async def test_topics_ensure_repairs_config_drift(kafka_settings: KafkaSettings) -> None:
    settings = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"d{uuid.uuid4().hex[:6]}."
    )
    await ensure_topics(settings)
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    name = f"{settings.topic_prefix}cp-connections"
    admin = admin_client(settings)
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, {"cleanup.policy": "delete"})]
        )
        # Config changes travel through the KRaft metadata log: wait until the drift is visible.
        for _ in range(100):
            if (await describe_topic_configs(admin, [name]))[name]["cleanup.policy"] == "delete":
                break
            await asyncio.sleep(0.1)
        changes = {c.topic: c for c in await ensure_topics(settings)}
        assert changes[name].action == "altered"
        assert "cleanup.policy=compact" in changes[name].detail
        for _ in range(100):
            if (await describe_topic_configs(admin, [name]))[name]["cleanup.policy"] == "compact":
                break
            await asyncio.sleep(0.1)
        assert (await describe_topic_configs(admin, [name]))[name]["cleanup.policy"] == "compact"
    finally:
        await admin.close()


async def test_run_batches_commits_after_the_handler(
    kafka_settings: KafkaSettings, producer: EventProducer
) -> None:
    from blametrail_common.kafka import run_batches

    group = f"g-{uuid.uuid4().hex[:6]}"
    for i in range(5):
        await producer.send_raw("webhook-audit", f"k{i}".encode(), f"v{i}".encode())
    seen: list[bytes] = []
    stop = asyncio.Event()

    async def handle(batch) -> None:  # type: ignore[no-untyped-def]
        seen.extend(r.value for r in batch)
        if len(seen) >= 5:
            stop.set()

    consumer = create_consumer(kafka_settings, ["webhook-audit"], group_id=group)
    await consumer.start()
    try:
        await asyncio.wait_for(run_batches(consumer, handle, stop), 30)
        committed = 0
        for p in consumer.assignment():
            committed += (await consumer.committed(p)) or 0
    finally:
        await consumer.stop()
    assert committed >= 5
    assert set(seen) >= {f"v{i}".encode() for i in range(5)}

    failing = create_consumer(kafka_settings, ["webhook-audit"], group_id=f"{group}-f")
    await failing.start()

    async def explode(batch) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("effect failed")

    try:
        with pytest.raises(RuntimeError, match="effect failed"):
            await asyncio.wait_for(run_batches(failing, explode, asyncio.Event()), 30)
        for p in failing.assignment():
            assert await failing.committed(TopicPartition(p.topic, p.partition)) is None
    finally:
        await failing.stop()


async def test_poll_batch_gathers_what_arrives_within_its_gather_in_log_order(
    kafka_settings: KafkaSettings, producer: EventProducer
) -> None:
    """A loop that polled a few records takes what arrives within ``gather_ms`` too, in one
    batch (its per-batch costs paid once), each partition in log order."""
    spec = next(t for t in TOPICS if t.name == "sentry-webhooks-raw")
    name = topic_name(spec.name, kafka_settings.topic_prefix)
    consumer = create_consumer(kafka_settings, [], group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(name, p) for p in range(spec.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        key = f"gather-{uuid.uuid4()}".encode()
        await producer.send_raw("sentry-webhooks-raw", key, b"first", [])

        async def later() -> None:
            await asyncio.sleep(0.2)
            for i in range(4):
                await producer.send_raw("sentry-webhooks-raw", key, f"next{i}".encode(), [])

        sending = asyncio.create_task(later())
        polled = await poll_batch(consumer, timeout_ms=10_000, gather_ms=3000)
        await sending
        mine = [r.value for records in polled.values() for r in records if r.key == key]
        assert mine == [b"first", b"next0", b"next1", b"next2", b"next3"]
        # a full batch is handed over at once, an idle poll waits no gather
        assert await poll_batch(consumer, timeout_ms=100, gather_ms=60_000) == {}
    finally:
        await consumer.stop()


async def test_poll_batch_takes_no_record_twice_when_its_partition_is_fetched_again(
    kafka_settings: KafkaSettings, producer: EventProducer
) -> None:
    """A rebalance during the gather makes the fetcher read a partition again from its committed
    offset (here: a seek back, which is what that does): the batch keeps each record once."""
    spec = next(t for t in TOPICS if t.name == "sentry-webhooks-raw")
    name = topic_name(spec.name, kafka_settings.topic_prefix)
    key = f"again-{uuid.uuid4()}".encode()
    sent = [await producer.send_raw("sentry-webhooks-raw", key, b"v%d" % i, []) for i in range(5)]
    tp = TopicPartition(name, sent[0].partition)
    consumer = create_consumer(kafka_settings, [], group_id=None)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, sent[0].offset)

        async def rewind() -> None:
            await asyncio.sleep(0.3)
            consumer.seek(tp, sent[0].offset)

        rewinding = asyncio.create_task(rewind())
        polled = await poll_batch(consumer, timeout_ms=10_000, gather_ms=2000)
        await rewinding
        offsets = [r.offset for r in polled[tp]]
        assert offsets == sorted(set(offsets))  # in order, each once
        assert [r.value for r in polled[tp] if r.key == key] == [b"v0", b"v1", b"v2", b"v3", b"v4"]
    finally:
        await consumer.stop()
