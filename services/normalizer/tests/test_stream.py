"""The faust worker against the real broker: mappings from cp-* topics decide what becomes an incident."""

from __future__ import annotations

import asyncio
import json
import uuid
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
from blametrail_common.settings import KafkaSettings
from blametrail_common.testing import signed_fixture
from blametrail_normalizer.app import create_app
from blametrail_normalizer.settings import NormalizerSettings

NOW = datetime(2026, 3, 14, 10, 0, tzinfo=UTC)


def _raw(conn: str, body: bytes, resource: str = "issue", action: str = "created") -> Any:
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
    return new_event(payload, key="5912345678")


def _issue(slug: str, issue_id: str) -> bytes:
    body = signed_fixture("issue.created")[0]
    return body.replace(b'"slug":"checkout-api"', b'"slug":"%s"' % slug.encode()).replace(
        b"5912345678", issue_id.encode()
    )


async def _collect(kafka: KafkaSettings, topic: str, want: int, timeout_s: float = 60) -> list[Any]:
    consumer = create_consumer(kafka, [topic], group_id=None)
    await consumer.start()
    out: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(out) < want and loop.time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                out.extend(decode(r.value) for r in batch)
    finally:
        await consumer.stop()
    return out


async def test_mapped_unmapped_inactive_and_edited_mappings_through_the_real_stream(
    kafka_settings: KafkaSettings,
) -> None:
    # A topic prefix of its own: this test reads whole topics.
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"n{uuid.uuid4().hex[:6]}."
    )
    from blametrail_common.kafka.admin import ensure_topics

    await ensure_topics(kafka)
    conn, tenant = "conn-s", "tenant-s"
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()

    async def mapping(slug: str, service: str, active: bool) -> None:
        state = MappingStateV1(
            mapping_id=f"m-{slug}",
            tenant_id=tenant,
            connection_id=conn,
            sentry_project_slug=slug,
            service_id=service,
            active=active,
            updated_at=datetime.now(UTC),
        )
        await producer.send("cp-mappings", new_event(state, key=mapping_key(conn, slug)))

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
    for sid in ("svc-a", "svc-b"):
        await producer.send(
            "cp-services",
            new_event(
                ServiceStateV1(
                    service_id=sid, tenant_id=tenant, slug=sid, name=sid, updated_at=NOW
                ),
                key=sid,
            ),
        )
    await mapping("payments-api", "svc-a", True)
    await mapping("internal-tools", "svc-a", False)
    await producer.send("sentry-webhooks-raw", _raw(conn, _issue("payments-api", "1001")))
    await producer.send("sentry-webhooks-raw", _raw(conn, _issue("frontend", "1002")))
    await producer.send("sentry-webhooks-raw", _raw(conn, _issue("internal-tools", "1003")))
    await producer.send_raw("sentry-webhooks-raw", b"x", b"not an envelope")

    settings = NormalizerSettings(app_id=f"norm-test-{uuid.uuid4().hex[:6]}")
    normalizer = create_app(settings, kafka)
    normalizer.app.finalize()
    await normalizer.app.start()
    try:
        first = await _collect(kafka, "incident-events", 1)
        audits = await _collect(kafka, "webhook-audit", 2)
        # Editing the mapping routes only new webhooks to the new service.
        await mapping("payments-api", "svc-b", True)
        await asyncio.sleep(1.0)
        await producer.send("sentry-webhooks-raw", _raw(conn, _issue("payments-api", "1004")))
        both = await _collect(kafka, "incident-events", 2)
        await _collect(kafka, "sentry-webhooks-raw-dlq", 0, timeout_s=3)
        assert normalizer.ready()
    finally:
        await normalizer.close()
    # A restart of the same app (same consumer group) resumes: ready, and new webhooks flow.
    restarted = create_app(settings, kafka)
    restarted.app.finalize()
    await restarted.app.start()
    try:
        await producer.send("sentry-webhooks-raw", _raw(conn, _issue("payments-api", "1005")))
        after = await _collect(kafka, "incident-events", 3)
        assert restarted.ready()
    finally:
        await restarted.close()
        await producer.stop()
    assert sorted(e.payload.sentry.issue_id for e in after) == ["1001", "1004", "1005"]
    assert [(e.type, e.payload.service_id, e.payload.sentry.issue_id) for e in first] == [
        ("incident.opened", "svc-a", "1001")
    ]
    assert sorted((a.payload.reason, a.payload.project_slug) for a in audits) == [
        ("inactive", "internal-tools"),
        ("unmapped", "frontend"),
    ]
    # Different incidents live in different partitions: no order between them.
    assert sorted((e.payload.sentry.issue_id, e.payload.service_id) for e in both) == [
        ("1001", "svc-a"),
        ("1004", "svc-b"),
    ]
    consumer = create_consumer(kafka, ["sentry-webhooks-raw-dlq"], group_id=None)
    await consumer.start()
    try:
        polled = await consumer.getmany(timeout_ms=3000)
        dead_records = [r for b in polled.values() for r in b]
    finally:
        await consumer.stop()
    assert [r.value for r in dead_records] == [b"not an envelope"]
    assert dict(dead_records[0].headers)["dlq-reason"].startswith(b"event is not valid JSON")


def _alert(issue_id: str, settings: list[dict[str, str]]) -> bytes:
    doc = json.loads(signed_fixture("event_alert.triggered")[0])
    doc["data"]["issue_alert"]["settings"] = settings
    doc["data"]["event"]["issue_id"] = issue_id
    return json.dumps(doc).encode()


async def test_alert_rule_action_settings_decide_severity_service_and_filter_on_the_stream(
    kafka_settings: KafkaSettings,
) -> None:
    """The settings Sentry saved for our alert-rule action (severity, service, environment)
    route and grade the incident, through the real worker on the broker."""
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"a{uuid.uuid4().hex[:6]}."
    )
    from blametrail_common.kafka.admin import ensure_topics

    await ensure_topics(kafka)
    conn, tenant = "conn-a", "tenant-a"
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    states: list[tuple[str, Any]] = [
        (
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
        ),
        *(
            (
                "cp-services",
                new_event(
                    ServiceStateV1(
                        service_id=sid, tenant_id=tenant, slug=sid, name=sid, updated_at=NOW
                    ),
                    key=sid,
                ),
            )
            for sid in ("svc-mapped", "svc-oncall")
        ),
        (
            "cp-mappings",
            new_event(
                MappingStateV1(
                    mapping_id="m-1",
                    tenant_id=tenant,
                    connection_id=conn,
                    sentry_project_slug="checkout-api",
                    service_id="svc-mapped",
                    active=True,
                    updated_at=NOW,
                ),
                key=mapping_key(conn, "checkout-api"),
            ),
        ),
    ]
    await producer.send_many(states)
    routed = [{"name": "severity", "value": "sev1"}, {"name": "service", "value": "svc-oncall"}]
    plain = [{"name": "team", "value": "payments"}]
    filtered = [*routed, {"name": "environment", "value": "staging"}]  # the event is production
    foreign = [{"name": "service", "value": "svc-of-someone-else"}]
    for issue_id, settings in (
        ("2001", routed),
        ("2002", plain),
        ("2003", filtered),
        ("2004", foreign),
    ):
        await producer.send(
            "sentry-webhooks-raw",
            _raw(conn, _alert(issue_id, settings), resource="event_alert", action="triggered"),
        )
    normalizer = create_app(NormalizerSettings(app_id=f"norm-alert-{uuid.uuid4().hex[:6]}"), kafka)
    normalizer.app.finalize()
    await normalizer.app.start()
    try:
        incidents = await _collect(kafka, "incident-events", 2)
        audits = await _collect(kafka, "webhook-audit", 2)
    finally:
        await normalizer.close()
        await producer.stop()
    got = {e.payload.sentry.issue_id: (e.payload.service_id, e.payload.severity) for e in incidents}
    assert got["2001"] == ("svc-oncall", "sev1")  # both settings honoured, no mapping needed
    assert got["2002"][0] == "svc-mapped"  # no service setting: the mapping routes it
    assert sorted(a.payload.reason for a in audits) == ["environment_filtered", "unknown_service"]
