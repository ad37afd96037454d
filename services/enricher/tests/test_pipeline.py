"""The enricher's stream step on the real broker: give-ups are recorded and dead-lettered, never
lost, and a redrive after the cause is fixed completes the enrichment."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from blametrail_common.events import decode, new_event
from blametrail_common.events.enrichment import IncidentEnrichedV1, IncidentEnrichmentFailedV1
from blametrail_common.events.incidents import (
    IncidentOpenedV1,
    IncidentResolvedV1,
    IssueSnapshot,
    SentryRef,
)
from blametrail_common.kafka import EventProducer, create_consumer, create_producer, run_batches
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.kafka.redrive import redrive
from blametrail_common.sentry_api import HttpxSentryApi, RetryPolicy, SentryCredentials
from blametrail_common.settings import KafkaSettings
from blametrail_enricher import pipeline
from blametrail_enricher.pipeline import Enricher
from blametrail_enricher.records import Limits
from blametrail_sentry_stub import StubState, serve

T0 = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)


class Creds:
    def __init__(self, creds: SentryCredentials) -> None:
        self.current = creds
        self.refresh_requests = 0

    def credentials(self, connection_id: str) -> SentryCredentials | None:
        return self.current

    async def request_refresh(self, connection_id: str, rejected: SentryCredentials) -> None:
        assert rejected.token == self.current.token
        self.refresh_requests += 1


def _event(kind: type, issue: str, incident_id: str | None = None) -> object:
    incident_id = incident_id or str(uuid.uuid4())
    p = kind(
        incident_id=incident_id,
        tenant_id="t",
        service_id="s",
        source="sentry_issue",
        severity="sev2",
        status_at=T0,
        sentry=SentryRef(connection_id="c", issue_id=issue),
        snapshot=IssueSnapshot(title="x"),
    )
    return new_event(p, key=incident_id, tenant="t")


async def _run_once(kafka: KafkaSettings, enricher: Enricher, group: str, want: int) -> None:
    stop, handled = asyncio.Event(), 0
    consumer = create_consumer(kafka, ["incident-events"], group)
    await consumer.start()

    async def handle(batch: list) -> None:  # type: ignore[type-arg]
        nonlocal handled
        await enricher.handle(batch)
        handled += len(batch)
        if handled >= want:
            stop.set()

    try:
        await asyncio.wait_for(run_batches(consumer, handle, stop), 60)
    finally:
        await consumer.stop()


async def _read(kafka: KafkaSettings, topic: str) -> list:  # type: ignore[type-arg]
    consumer = create_consumer(kafka, [topic], group_id=None)
    await consumer.start()
    try:
        return [r for b in (await consumer.getmany(timeout_ms=3000)).values() for r in b]
    finally:
        await consumer.stop()


async def test_rejected_token_gives_a_failure_record_and_a_dead_letter_then_redrive_enriches(
    kafka_settings: KafkaSettings,
) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"x{uuid.uuid4().hex[:6]}."
    )
    await ensure_topics(kafka)
    stub = StubState()
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    async with serve(stub) as url, httpx.AsyncClient() as http:
        creds = Creds(SentryCredentials(url, "acme", "revoked-token"))
        enricher = Enricher(
            HttpxSentryApi(http, RetryPolicy(base_delay_s=0.01)),
            creds,
            producer,
            refresh_wait_s=0.3,
        )
        opened = _event(IncidentOpenedV1, "42")
        resolved = _event(IncidentResolvedV1, "42", opened.payload.incident_id)  # type: ignore[attr-defined]
        for env in (opened, resolved):
            await producer.send("incident-events", env)  # type: ignore[arg-type]
        await _run_once(kafka, enricher, "g1", 2)
        assert creds.refresh_requests == 1  # asked the token's owner once, did not refresh itself

        creds.current = SentryCredentials(
            url, "acme", stub.add_internal_token("acme")
        )  # the cause is fixed
        assert (await redrive(kafka, "incident-events")).redriven == 1
        await _run_once(kafka, enricher, "g1", 1)
    await producer.stop()

    outputs = [decode(r.value).payload for r in await _read(kafka, "incident-enrichments")]
    assert [type(p) for p in outputs] == [IncidentEnrichmentFailedV1, IncidentEnrichedV1]
    assert outputs[0].incident_id == outputs[1].incident_id == opened.payload.incident_id  # type: ignore[attr-defined]
    assert "401" in outputs[0].reason
    dead = await _read(kafka, "incident-events-dlq")
    # the incident's later state change needs no enrichment of its own
    assert [r.key for r in dead] == [opened.key.encode()]  # type: ignore[attr-defined]


async def test_an_event_no_record_can_hold_is_a_failure_recorded_not_a_batch_failing_forever(
    kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever in Sentry's answer makes ``build_record`` refuse it (a value pydantic cannot
    write, say) fails that one enrichment for good, with the reason; before, the error left the
    batch, which the loop redelivered and failed again, stalling the partition."""
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"x{uuid.uuid4().hex[:6]}."
    )
    await ensure_topics(kafka)

    def refuse(*_: object, **__: object) -> None:
        raise ValueError("Maximum serialization depth exceeded")

    monkeypatch.setattr(pipeline, "build_record", refuse)
    stub = StubState()
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    async with serve(stub) as url, httpx.AsyncClient() as http:
        creds = Creds(SentryCredentials(url, "acme", stub.add_internal_token("acme")))
        enricher = Enricher(HttpxSentryApi(http, RetryPolicy(base_delay_s=0.01)), creds, producer)
        opened = _event(IncidentOpenedV1, "43")
        await producer.send("incident-events", opened)  # type: ignore[arg-type]
        await _run_once(kafka, enricher, "g1", 1)
    await producer.stop()

    (failed,) = [decode(r.value).payload for r in await _read(kafka, "incident-enrichments")]
    assert isinstance(failed, IncidentEnrichmentFailedV1)
    assert failed.incident_id == opened.payload.incident_id  # type: ignore[attr-defined]
    assert "cannot be recorded: Maximum serialization depth exceeded" in failed.reason
    assert [r.key for r in await _read(kafka, "incident-events-dlq")] == [opened.key.encode()]  # type: ignore[attr-defined]


async def test_a_hostile_answer_from_sentry_is_enriched_within_the_bound_not_a_stalled_partition(
    kafka_settings: KafkaSettings,
) -> None:
    """Sentry's latest event with a 2 MB release version, long links and a context nested past
    what pydantic writes: before, the record (2 MB and more) was refused by Kafka or could not be
    written at all, on every delivery. Now the incident is enriched, the record within its bound."""
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"x{uuid.uuid4().hex[:6]}."
    )
    await ensure_topics(kafka)
    deep: dict[str, object] = {}
    node = deep
    for _ in range(240):  # the stand-in writes with orjson, which stops at 255
        node["a"] = {}
        node = node["a"]  # type: ignore[assignment]
    hostile = {
        "eventID": "e1",
        "title": "Boom",
        "release": {"version": "v" * 2_000_000},
        "web_url": "u" * 500_000,
        "contexts": {"app": {"deep": deep}},
    }
    stub = StubState()
    stub.issues[("acme", "44")] = {"latest_event": hostile, "tags": []}
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    async with serve(stub) as url, httpx.AsyncClient() as http:
        creds = Creds(SentryCredentials(url, "acme", stub.add_internal_token("acme")))
        enricher = Enricher(HttpxSentryApi(http, RetryPolicy(base_delay_s=0.01)), creds, producer)
        await producer.send("incident-events", _event(IncidentOpenedV1, "44"))  # type: ignore[arg-type]
        await _run_once(kafka, enricher, "g1", 1)
    await producer.stop()

    (record,) = await _read(kafka, "incident-enrichments")
    enriched = decode(record.value).payload
    assert isinstance(enriched, IncidentEnrichedV1)
    assert len(record.value) <= Limits().max_bytes
    assert enriched.title == "Boom"
    assert enriched.release is not None
    assert enriched.release.version.endswith("…[truncated]")
    assert "…[nested too deep]" in str(enriched.contexts["app"])
