"""Recognising echoes after a restart, on the real broker (issue 18 M4): a replica reads only the
recent part of ``incident-writebacks`` (a log kept forever), and the raw agent normalizes nothing
before that part is loaded (else the echo of our own write-back would become a state change)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from blametrail_common.events import WebhookReceivedV1, body_sha256, encode, new_event
from blametrail_common.events.actions import WriteBackRequestedV1
from blametrail_common.kafka import EventProducer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.settings import KafkaSettings
from blametrail_common.topics import topic_name
from blametrail_normalizer.app import Normalizer, _handle_batch
from blametrail_normalizer.commands import WriteBacks
from blametrail_normalizer.tables import ControlPlaneTables, LruDict, TableLookup


def _writeback(incident: str, at: datetime) -> Any:
    payload = WriteBackRequestedV1(
        writeback_id=str(uuid.uuid4()),
        incident_id=incident,
        tenant_id="t",
        connection_id="c",
        issue_id="42",
        status="resolved",
        sentry_status="resolved",
        cause="action",
        at=at,
    )
    return new_event(payload, key=incident)


async def _kafka(kafka_settings: KafkaSettings) -> KafkaSettings:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers,
        topic_prefix=f"ew{uuid.uuid4().hex[:6]}.",
    )
    await ensure_topics(kafka)
    return kafka


async def test_a_replica_reads_only_the_recent_write_backs(kafka_settings: KafkaSettings) -> None:
    kafka = await _kafka(kafka_settings)
    old, recent = str(uuid.uuid4()), str(uuid.uuid4())
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    raw = create_producer(kafka)
    await raw.start()
    try:
        topic = topic_name("incident-writebacks", kafka.topic_prefix)
        # Written two days ago (the record's own timestamp), then one written now.
        await raw.send_and_wait(
            topic,
            encode(_writeback(old, two_days_ago)),
            key=old.encode(),
            timestamp_ms=int(two_days_ago.timestamp() * 1000),
        )
        await raw.send_and_wait(
            topic, encode(_writeback(recent, datetime.now(UTC))), key=recent.encode()
        )
    finally:
        await raw.stop()
    writebacks = WriteBacks(kafka, lookback=timedelta(hours=1))
    try:
        await writebacks.table.start(timeout_s=60)
        assert writebacks.ready()
        assert writebacks.recent(recent)
        assert not writebacks.recent(old)  # outside the lookback: never read
    finally:
        await writebacks.table.stop()


async def test_only_old_write_backs_start_ready_at_once(kafka_settings: KafkaSettings) -> None:
    kafka = await _kafka(kafka_settings)
    long_ago = datetime.now(UTC) - timedelta(days=30)
    raw = create_producer(kafka)
    await raw.start()
    try:
        for _ in range(20):
            incident = str(uuid.uuid4())
            await raw.send_and_wait(
                topic_name("incident-writebacks", kafka.topic_prefix),
                encode(_writeback(incident, long_ago)),
                key=incident.encode(),
                timestamp_ms=int(long_ago.timestamp() * 1000),
            )
    finally:
        await raw.stop()
    writebacks = WriteBacks(kafka, lookback=timedelta(hours=1))
    try:
        await writebacks.table.start(timeout_s=60)  # nothing in the window: ready, not waiting
        assert writebacks.ready()
        assert len(writebacks) == 0
    finally:
        await writebacks.table.stop()


def _webhook() -> Any:
    body = b'{"action":"created","installation":{"uuid":"u"},"data":{"issue":{"id":"1"}}}'
    payload = WebhookReceivedV1(
        connection_id="no-such-connection",  # audited as unknown: no control plane needed
        resource="issue",
        action="created",
        installation_uuid=None,
        signature_header="Sentry-Hook-Signature",
        request_id="req-1",
        hook_timestamp=str(int(datetime.now(UTC).timestamp())),
        received_at=datetime.now(UTC),
        body_sha256=body_sha256(body),
        body=body.decode(),
    )
    return new_event(payload, key="1")


async def test_the_raw_agent_waits_for_the_write_backs(kafka_settings: KafkaSettings) -> None:
    kafka = await _kafka(kafka_settings)
    cp = ControlPlaneTables(kafka)
    cp.ready.set()  # the control plane is loaded; the write-backs are not yet
    app: Any = SimpleNamespace()  # the app is needed only to crash, which this batch does not
    normalizer = Normalizer(app, TableLookup(cp, LruDict(10), LruDict(10)), kafka)
    normalizer.echoes = WriteBacks(kafka, lookback=timedelta(hours=1))
    normalizer._producer = EventProducer(create_producer(kafka), kafka)
    await normalizer._producer.start()
    message = SimpleNamespace(
        value=encode(_webhook()), topic="sentry-webhooks-raw", partition=0, offset=7
    )
    batch = asyncio.create_task(_handle_batch(normalizer, [message]))
    try:
        done, _ = await asyncio.wait({batch}, timeout=1.5)
        assert not done, "normalized before the recent write-backs were loaded"
        assert not normalizer.processed
        await normalizer.echoes.table.start(timeout_s=60)
        await asyncio.wait_for(batch, 60)
        assert normalizer.processed == {("sentry-webhooks-raw", 0): 8}
    finally:
        batch.cancel()
        await asyncio.gather(batch, return_exceptions=True)
        await normalizer.echoes.table.stop()
        await normalizer._producer.stop()
