"""CompactedTable against the real broker: latest value wins, tombstones delete, it follows."""

import asyncio
import uuid
from datetime import UTC, datetime

from blametrail_common.events import ConnectionStateV1, new_event
from blametrail_common.kafka import EventProducer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.settings import KafkaSettings


def _conn(cid: str, slug: str) -> ConnectionStateV1:
    return ConnectionStateV1(
        connection_id=cid,
        tenant_id="t",
        mode="internal",
        enabled=True,
        sentry_org_slug=slug,
        api_base_url="https://sentry.io",
        client_secrets_enc=["x"],
        updated_at=datetime.now(UTC),
    )


async def test_table_loads_latest_state_then_follows(kafka_settings: KafkaSettings) -> None:
    a, b, c = (f"{n}-{uuid.uuid4().hex[:6]}" for n in "abc")
    producer = EventProducer(create_producer(kafka_settings), kafka_settings)
    await producer.start()
    seen: list[tuple[str, str | None]] = []
    table = CompactedTable(
        kafka_settings,
        "cp-connections",
        ConnectionStateV1,
        on_change=lambda k, p: seen.append((k, p.sentry_org_slug if p else None)),
    )
    try:
        for cid, slug in ((a, "one"), (b, "two"), (a, "one-renamed")):
            await producer.send("cp-connections", new_event(_conn(cid, slug), key=cid))
        await producer.send_raw("cp-connections", b.encode(), None)  # tombstone
        await producer.send_raw("cp-connections", b"junk-key", b"not an event")  # skipped, logged
        await table.start()
        assert table.ready.is_set()
        got_a = table.get(a)
        assert got_a is not None
        assert got_a.sentry_org_slug == "one-renamed"
        assert table.get(b) is None
        assert (b, None) in seen
        await producer.send("cp-connections", new_event(_conn(c, "three"), key=c))
        for _ in range(50):
            if table.get(c) is not None:
                break
            await asyncio.sleep(0.1)
        got_c = table.get(c)
        assert got_c is not None
        assert got_c.sentry_org_slug == "three"
    finally:
        await table.stop()
        await producer.stop()


async def test_caught_up_returns_once_everything_written_before_is_applied(
    kafka_settings: KafkaSettings,
) -> None:
    """A record acknowledged before ``caught_up()`` is in the table when it returns (no wait on a
    poll interval), whichever partition it went to."""
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers,
        topic_prefix=f"cu{uuid.uuid4().hex[:6]}.",
    )
    await ensure_topics(kafka)
    table = CompactedTable(kafka, "cp-connections", ConnectionStateV1)
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    try:
        await table.start()
        await table.caught_up()  # nothing written: at once
        for n in range(8):
            cid = f"cu-{n}-{uuid.uuid4().hex[:6]}"
            await producer.send("cp-connections", new_event(_conn(cid, f"org{n}"), key=cid))
            await table.caught_up()
            assert table.get(cid) is not None, n
    finally:
        await producer.stop()
        await table.stop()
