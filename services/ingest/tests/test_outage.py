"""Nothing accepted is ever lost: Kafka down -> spool -> ingest restarted -> Kafka back -> all arrive, in order."""

from __future__ import annotations

import asyncio
import signal
import socket
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.events import ConnectionStateV1, new_event
from blametrail_common.kafka import EventProducer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.settings import KafkaSettings
from blametrail_common.signature import sign
from blametrail_common.testing import TEST_SECRET
from blametrail_common.topics import get_topic
from blametrail_devstack.ingest_testing import RawTopic, make_settings, payload_of, running_ingest
from blametrail_devstack.kafka import KafkaNode
from blametrail_devstack.stack import free_port
from blametrail_ingest.connections import ConnectionSecrets
from blametrail_ingest.publisher import WebhookPublisher
from blametrail_ingest.spool import Spool, SpoolFull


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket closes


def _webhook(i: int) -> tuple[bytes, dict[str, str]]:
    body = (
        b'{"action":"created","installation":{"uuid":"u"},"data":{"issue":{"id":"777","n":%d}}}' % i
    )
    return body, {
        "Content-Type": "application/json",
        "Sentry-Hook-Resource": "issue",
        "Request-ID": f"req-{i}",
        "Sentry-Hook-Signature": sign(body, TEST_SECRET),
    }


async def test_broker_down_spool_restart_then_everything_arrives_in_order(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    down = KafkaSettings(
        bootstrap_servers=_closed_port(),
        topic_prefix=kafka_settings.topic_prefix,
        request_timeout_ms=1000,
    )
    settings = make_settings(spool, publish_timeout_s=0.1)
    async with RawTopic(kafka_settings) as raw:
        async with (
            running_ingest(down, settings) as (url, publisher),
            httpx.AsyncClient(base_url=url) as client,
        ):
            assert not publisher.connected
            for i in range(30):
                body, headers = _webhook(i)
                resp = await client.post("/webhooks/sentry", content=body, headers=headers)
                assert resp.status_code == 200
                assert resp.json()["queued"] is True
            assert (await client.get("/readyz")).status_code == 200  # spool writable: still ready
        assert not Spool(spool, 10**9).is_empty()  # survived the stop of that ingest
        assert await raw.nothing_more(0.5)

        # A new ingest process on the same spool, with the broker reachable: it drains in order.
        async with running_ingest(kafka_settings, settings) as (url, publisher):
            assert await publisher.drained(timeout_s=20)
            records = await raw.read(30)
    assert [payload_of(r).request_id for r in records] == [f"req-{i}" for i in range(30)]
    assert [payload_of(r).body.encode() for r in records] == [_webhook(i)[0] for i in range(30)]
    assert Spool(spool, 10**9).is_empty()


async def test_503_only_when_kafka_and_spool_both_fail(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    down = KafkaSettings(bootstrap_servers=_closed_port(), topic_prefix=kafka_settings.topic_prefix)
    settings = make_settings(tmp_path / "spool", spool_max_bytes=3000, publish_timeout_s=0.1)
    async with (
        running_ingest(down, settings) as (url, _),
        httpx.AsyncClient(base_url=url) as client,
    ):
        statuses = []
        for i in range(8):
            body, headers = _webhook(i)
            statuses.append(
                (await client.post("/webhooks/sentry", content=body, headers=headers)).status_code
            )
    assert statuses[0] == 200
    assert statuses[-1] == 503  # the bounded spool filled up and Kafka is unreachable
    assert set(statuses) == {200, 503}


def test_spool_survives_torn_writes_and_refuses_past_its_bound(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=200)
    asyncio.run(spool.append_many([(b"k1", b"v1")]))
    with open(next(tmp_path.glob("seg-*.log")), "ab") as f:
        f.write(b"\x00\x00\x01\x00garbage")  # a crash mid-append: never acknowledged
    batch = spool.read_batch()
    assert [(r.key, r.value) for r in batch] == [(b"k1", b"v1")]
    with pytest.raises(SpoolFull, match="bound 200"):
        asyncio.run(spool.append_many([(b"k", b"x" * 300)]))


def test_a_torn_write_left_by_a_crash_does_not_bury_what_the_next_process_spools(
    tmp_path: Path,
) -> None:
    """kill -9 in the middle of an append, then a restart that spools more: everything
    acknowledged is read back, in order (the torn frame is cut off before the first append)."""
    asyncio.run(Spool(tmp_path, 10**6).append_many([(b"k1", b"v1")]))
    with open(next(tmp_path.glob("seg-*.log")), "ab") as f:
        f.write(b"\x00\x00\x01\x00garbage")  # the crash: never acknowledged
    restarted = Spool(tmp_path, 10**6)
    asyncio.run(restarted.append_many([(b"k2", b"v2")]))
    batch = restarted.read_batch()
    assert [(r.key, r.value) for r in batch] == [(b"k1", b"v1"), (b"k2", b"v2")]
    restarted.mark_forwarded(batch[-1])
    assert restarted.is_empty()


class _StallingProducer(EventProducer):
    """The real producer, whose first hand-over stalls like a broker that stopped answering."""

    def __init__(self, kafka: KafkaSettings, stall_s: float) -> None:
        super().__init__(create_producer(kafka, linger_ms=0), kafka)
        self.stall_s, self.calls = stall_s, 0

    async def enqueue_raw(self, topic, records, headers=()):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(self.stall_s)
        return await super().enqueue_raw(topic, records, headers)


async def test_a_batch_kafka_does_not_take_in_time_is_spooled_with_everything_behind_it(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """Group commit under a stall: the stuck batch answers from the spool within the publish
    timeout, the records behind it follow it there, and the drain keeps their order on Kafka
    (the stuck batch may arrive twice: a duplicate, never a loss)."""
    producer = _StallingProducer(kafka_settings, stall_s=1.0)
    publisher = WebhookPublisher(producer, Spool(tmp_path, 10**9), timeout_s=0.2)
    async with RawTopic(kafka_settings) as raw:
        await publisher.start()
        try:
            assert await publisher.connected_within(4.0)
            started = asyncio.get_running_loop().time()
            first = [asyncio.create_task(publisher.publish(b"777", b"v%d" % i)) for i in range(5)]
            await asyncio.sleep(0.05)  # the first batch is stuck in the hand-over
            second = [
                asyncio.create_task(publisher.publish(b"777", b"v%d" % i)) for i in range(5, 10)
            ]
            landed = await asyncio.gather(*first, *second)
            answered_in = asyncio.get_running_loop().time() - started
            later = [await publisher.publish(b"777", b"v%d" % i) for i in range(10, 15)]
            assert await publisher.drained(timeout_s=20)
            records = await raw.read(15, where=lambda r: r.key == b"777")
            records += await raw.read(5, timeout_s=2.0, where=lambda r: r.key == b"777")
        finally:
            await publisher.stop()
    assert landed == ["spool"] * 10, landed
    assert answered_in < 0.8  # the 0.2 s timeout decided, not the 1 s stall
    assert later == ["spool"] * 5  # behind a backlog, order beats speed
    values = [r.value for r in records]
    first_seen = list(dict.fromkeys(values))
    assert first_seen == [b"v%d" % i for i in range(15)]
    assert len(values) <= 20  # at most the stuck batch twice


class _SlowAcks(EventProducer):
    """The real producer (records reach the broker), whose acks reach us ``delay_s`` late."""

    def __init__(self, kafka: KafkaSettings, delay_s: float) -> None:
        super().__init__(create_producer(kafka, linger_ms=0), kafka)
        self.delay_s = delay_s

    async def enqueue_raw(self, topic, records, headers=()):  # type: ignore[no-untyped-def]
        acks = await super().enqueue_raw(topic, records, headers)

        async def late() -> list[object]:
            await asyncio.sleep(self.delay_s)
            return list(await asyncio.gather(*acks))

        return [asyncio.ensure_future(late())]


async def test_a_timeout_spools_every_outstanding_batch_oldest_first_and_new_ones_behind(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """Three batches in flight when the first one times out: all three (and the open one) go to
    the spool in their order, and webhooks arriving right after queue up behind them."""
    publisher = WebhookPublisher(_SlowAcks(kafka_settings, 2.0), Spool(tmp_path, 10**9), 0.3)
    await publisher.start()
    try:
        assert await publisher.connected_within(4.0)
        publisher._tasks[-1].cancel()  # no drainer: the spool keeps what it was given, to read
        batches = []
        for b in range(3):  # batches A, B, C, 50 ms apart: each has its own timer
            batches.append(
                [
                    asyncio.create_task(publisher.publish(b"9", b"v%02d" % (3 * b + i)))
                    for i in range(3)
                ]
            )
            await asyncio.sleep(0.05)
        assert await asyncio.gather(*batches[0]) == ["spool"] * 3  # A timed out
        behind = [asyncio.create_task(publisher.publish(b"9", b"v%02d" % i)) for i in range(9, 12)]
        landed = await asyncio.gather(*batches[1], *batches[2], *behind)
    finally:
        await publisher.stop()
    assert landed == ["spool"] * 9
    spooled = await asyncio.to_thread(Spool(tmp_path, 10**9).read_batch)
    assert [r.value for r in spooled] == [b"v%02d" % i for i in range(12)]


async def test_known_connections_keep_working_while_the_table_reader_loses_the_broker(
    tmp_path: Path,
) -> None:
    """A dedicated broker holding a connection; once the table has loaded, the broker is killed
    and restarted: the connection's webhooks get 200 throughout (spooled while it is away),
    /readyz stays ready, and the spool drains when it is back."""
    node = KafkaNode(tmp_path / "kafka", free_port(), free_port(), heap="384m")
    await asyncio.to_thread(node.start)
    try:
        kafka = KafkaSettings(bootstrap_servers=node.bootstrap, request_timeout_ms=2000)
        await ensure_topics(kafka, (get_topic("cp-connections"), get_topic("sentry-webhooks-raw")))
        box = SecretBox(generate_key())
        producer = EventProducer(create_producer(kafka), kafka)
        await producer.start()
        state = ConnectionStateV1(
            connection_id="c1",
            tenant_id="acme",
            mode="internal",
            enabled=True,
            sentry_org_slug="acme",
            api_base_url="https://sentry.io",
            client_secrets_enc=[box.encrypt("s1")],
            updated_at=datetime.now(UTC),
        )
        await producer.send("cp-connections", new_event(state, key="c1"))
        await producer.stop()
        table = CompactedTable(kafka, "cp-connections", ConnectionStateV1)
        await table.start()

        def webhook(i: int) -> tuple[bytes, dict[str, str]]:
            body = (
                b'{"action":"created","installation":{"uuid":"u"},"data":{"issue":{"id":"%d"}}}' % i
            )
            return body, {
                "Content-Type": "application/json",
                "Sentry-Hook-Resource": "issue",
                "Sentry-Hook-Signature": sign(body, "s1"),
            }

        settings = make_settings(tmp_path / "spool", publish_timeout_s=0.2)
        try:
            async with (
                running_ingest(kafka, settings, ConnectionSecrets(table, box)) as (url, publisher),
                httpx.AsyncClient(base_url=url, timeout=10) as client,
            ):
                statuses = []

                async def post(i: int) -> None:
                    body, headers = webhook(i)
                    resp = await client.post("/webhooks/sentry/c1", content=body, headers=headers)
                    statuses.append(resp.status_code)

                await post(0)
                node.stop(sig=signal.SIGKILL)
                for i in range(1, 11):  # the table's reader is failing and reconnecting now
                    await post(i)
                    await asyncio.sleep(0.3)
                assert (await client.get("/readyz")).status_code == 200
                await asyncio.to_thread(node.start)
                for i in range(11, 16):
                    await post(i)
                assert await publisher.drained(timeout_s=30)
                assert statuses == [200] * 16
        finally:
            await table.stop()
    finally:
        node.stop(sig=signal.SIGKILL)  # its data is thrown away
