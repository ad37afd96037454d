"""The projection on real Kafka and Postgres: poison-proof, monotonic, idempotent, rebuildable."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from blametrail_common.db import migrate
from blametrail_common.events import new_event
from blametrail_common.events.audit import WebhookAuditedV1
from blametrail_common.events.incidents import (
    IncidentOpenedV1,
    IncidentResolvedV1,
    IssueSnapshot,
    SentryRef,
)
from blametrail_common.kafka import EventProducer, create_consumer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.settings import KafkaSettings
from blametrail_devstack.logtools import end_offsets, project_until, table_checksums
from blametrail_devstack.pytest_plugin import Infra, create_database
from blametrail_projector.projection import PROJECTED_TOPICS, TABLES, Projection

T0 = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
CHECKSUM = {
    "incidents": "incident_id",
    "incident_timeline": "event_id",
    "incident_enrichments": "incident_id",
    "webhook_audit": "event_id",
    "incident_suspects": "incident_id",
}


def _incident(kind: type, incident_id: str, title: str, at: datetime) -> Any:
    payload = kind(
        incident_id=incident_id,
        tenant_id="t",
        service_id="svc",
        source="sentry_issue",
        severity="sev2",
        status_at=at,
        sentry=SentryRef(connection_id="c", issue_id=incident_id[:8]),
        snapshot=IssueSnapshot(title=title, count=3),
    )
    return new_event(payload, key=incident_id, tenant="t", occurred_at=at)


async def _project(
    kafka: KafkaSettings, dsn: str, group: str, producer: EventProducer, end: dict[str, int]
) -> None:
    """Run a projector until it has applied every record up to the end offsets seen now."""
    await project_until(kafka, dsn, group, PROJECTED_TOPICS, Projection(producer).apply, end)


async def _checksums(dsn: str) -> dict[str, str]:
    return await table_checksums(dsn, CHECKSUM)


async def test_poison_out_of_order_replay_and_rebuild(
    kafka_settings: KafkaSettings, infra: Infra
) -> None:
    assert set(CHECKSUM) == set(TABLES)
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"p{uuid.uuid4().hex[:6]}."
    )
    await ensure_topics(kafka)
    live = create_database(infra.server_dsn, f"bt_live_{uuid.uuid4().hex[:6]}")
    rebuilt = create_database(infra.server_dsn, f"bt_rebuilt_{uuid.uuid4().hex[:6]}")
    migrate(live)
    migrate(rebuilt)
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        # b: the resolve arrives before the open (Sentry does not guarantee order).
        for env in (
            _incident(IncidentOpenedV1, a, "nul \x00 inside", T0),
            _incident(IncidentResolvedV1, b, "resolved first", T0 + timedelta(minutes=5)),
            _incident(IncidentOpenedV1, b, "opened later", T0),
            _incident(IncidentResolvedV1, a, "nul \x00 inside", T0 + timedelta(minutes=1)),
        ):
            await producer.send("incident-events", env)
        await producer.send_raw("incident-events", b"junk", b"\xff not an event")
        audit = WebhookAuditedV1(
            reason="unmapped",
            detail="d\x00",
            tenant_id="t",
            connection_id="c",
            installation_uuid=None,
            resource="issue",
            action="created",
            project_slug="x\x00y",
            raw_event_id="r",
            body_sha256="0" * 64,
            received_at=T0,
        )
        await producer.send("webhook-audit", new_event(audit, key="t", tenant="t"))
        end = await end_offsets(kafka, PROJECTED_TOPICS)

        await _project(kafka, live, "live", producer, end)
        first = await _checksums(live)
        await _project(
            kafka, live, "replay", producer, end
        )  # the whole log again, into the same tables
        assert await _checksums(live) == first
        await _project(kafka, rebuilt, "rebuild", producer, end)  # from zero into empty tables
        assert await _checksums(rebuilt) == first
    finally:
        await producer.stop()

    async with await psycopg.AsyncConnection.connect(live) as conn:
        rows = dict(
            await (await conn.execute("SELECT incident_id::text, status FROM incidents")).fetchall()
        )
        title = await (
            await conn.execute("SELECT title FROM incidents WHERE incident_id = %s", (a,))
        ).fetchone()
        sanitized = await (
            await conn.execute("SELECT count(*) FROM incident_timeline WHERE sanitized")
        ).fetchone()
        timeline = await (await conn.execute("SELECT count(*) FROM incident_timeline")).fetchone()
        slug = await (await conn.execute("SELECT project_slug FROM webhook_audit")).fetchone()
    assert rows == {
        a: "resolved",
        b: "resolved",
    }  # the older "opened" of b did not undo its resolve
    assert title == ("nul \ufffd inside",)
    assert sanitized == (2,)
    assert timeline == (4,)
    assert slug == ("x\ufffdy",)
    consumer = create_consumer(kafka, ["incident-events-dlq"], group_id=None)
    await consumer.start()
    try:
        dead = [r for batch in (await consumer.getmany(timeout_ms=3000)).values() for r in batch]
    finally:
        await consumer.stop()
    assert (
        dead
    )  # the junk record was dead-lettered (once per projector run), never blocking its partition
    assert {r.value for r in dead} == {b"\xff not an event"}
