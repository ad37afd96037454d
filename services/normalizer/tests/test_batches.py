"""The raw agent in batches, on the real broker: a backlog of webhooks goes through in batches
(outputs published together), nothing lost or doubled, each incident's events in webhook order."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from blametrail_common.events import (
    ConnectionStateV1,
    MappingStateV1,
    ServiceStateV1,
    WebhookReceivedV1,
    body_sha256,
    decode,
    mapping_key,
    new_event,
)
from blametrail_common.kafka import EventProducer, create_consumer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.settings import KafkaSettings
from blametrail_common.testing import signed_fixture
from blametrail_normalizer.app import OUTCOMES, create_app
from blametrail_normalizer.settings import NormalizerSettings

NOW = datetime(2026, 3, 14, 10, 0, tzinfo=UTC)
ISSUES = 150


def _raw(conn: str, name: str, issue_id: str) -> Any:
    body = signed_fixture(name)[0].replace(b"5912345678", issue_id.encode())
    resource, action = name.split(".")
    payload = WebhookReceivedV1(
        connection_id=conn,
        resource=resource,
        action=action,
        installation_uuid=None,
        signature_header="Sentry-Hook-Signature",
        request_id=uuid.uuid4().hex,
        hook_timestamp="1773480414",
        received_at=NOW,
        body_sha256=body_sha256(body),
        body=body.decode(),
    )
    return new_event(payload, key=issue_id)


async def _seed(producer: EventProducer, conn: str, tenant: str) -> None:
    await producer.send(
        "cp-connections",
        new_event(
            ConnectionStateV1(
                connection_id=conn,
                tenant_id=tenant,
                mode="internal",
                enabled=True,
                sentry_org_slug="acme",
                api_base_url="https://sentry.io",
                client_secrets_enc=[],
                updated_at=NOW,
            ),
            key=conn,
        ),
    )
    await producer.send(
        "cp-services",
        new_event(
            ServiceStateV1(
                service_id="svc", tenant_id=tenant, slug="svc", name="svc", updated_at=NOW
            ),
            key="svc",
        ),
    )
    mapping = MappingStateV1(
        mapping_id="m",
        tenant_id=tenant,
        connection_id=conn,
        sentry_project_slug="checkout-api",
        service_id="svc",
        active=True,
        updated_at=NOW,
    )
    await producer.send("cp-mappings", new_event(mapping, key=mapping_key(conn, "checkout-api")))


async def test_a_backlog_goes_through_in_batches_in_order_without_loss_or_duplicates(
    kafka_settings: KafkaSettings,
) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers,
        topic_prefix=f"nb{uuid.uuid4().hex[:6]}.",
    )
    await ensure_topics(kafka)
    conn = "conn-b"
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    await _seed(producer, conn, "tenant-b")
    # The backlog is there before the worker starts, so its first polls are big batches; each
    # issue's resolution follows its creation within the same partition (the issue is the key).
    webhooks = [
        ("sentry-webhooks-raw", _raw(conn, name, str(7_000_000 + i)))
        for i in range(ISSUES)
        for name in ("issue.created", "issue.resolved")
    ]
    await producer.send_many(webhooks)
    incidents_before = OUTCOMES.labels("incident")._value.get()
    settings = NormalizerSettings(app_id=f"norm-batch-{uuid.uuid4().hex[:6]}", batch_max=64)
    normalizer = create_app(settings, kafka)
    normalizer.app.finalize()
    await normalizer.app.start()
    out: list[Any] = []
    try:
        consumer = create_consumer(kafka, ["incident-events"], group_id=None)
        await consumer.start()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 90
            while len(out) < 2 * ISSUES and loop.time() < deadline:
                for batch in (await consumer.getmany(timeout_ms=300)).values():
                    out.extend((r.partition, r.offset, decode(r.value)) for r in batch)
            extra = await consumer.getmany(timeout_ms=1500)  # nothing more comes
        finally:
            await consumer.stop()
    finally:
        await normalizer.close()
        await producer.stop()
    assert not any(extra.values())
    # close() stopped what the app started: the write-backs table it waited for before its
    # first batch too (its consumer was once left open)
    assert normalizer.echoes is not None
    assert normalizer.echoes.ready()
    assert not normalizer.echoes.table.running
    by_incident: dict[str, list[str]] = defaultdict(list)
    for _, _, event in sorted(out, key=lambda o: (o[0], o[1])):
        by_incident[event.payload.sentry.issue_id].append(event.type)
    assert len(by_incident) == ISSUES
    assert all(types == ["incident.opened", "incident.resolved"] for types in by_incident.values())
    assert len({e.id for _, _, e in out}) == 2 * ISSUES
    assert OUTCOMES.labels("incident")._value.get() - incidents_before == 2 * ISSUES
