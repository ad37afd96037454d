"""Links from incidents to Sentry issues on the real broker and the stand-in: an installation
whose links Sentry refuses is reported once and not tried per incident; fixed, it links again."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from blametrail_common.events import decode, new_event
from blametrail_common.events.enrichment import IncidentEnrichedV1, IncidentLinkedV1
from blametrail_common.events.incidents import IncidentOpenedV1, IssueSnapshot, SentryRef
from blametrail_common.kafka import EventProducer, create_consumer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.sentry_api import AiohttpSentryApi, RetryPolicy, SentryCredentials
from blametrail_common.settings import KafkaSettings
from blametrail_enricher.http import sentry_client
from blametrail_enricher.links import BrokenLinks, link_cause
from blametrail_enricher.pipeline import Enricher
from blametrail_enricher.settings import EnricherSettings
from blametrail_sentry_stub import StubState, serve
from prometheus_client import REGISTRY

T0 = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
PAGE = "http://127.0.0.1:8080/incidents/{incident_id}"  # the web's page via `make up`'s edge


class Creds:
    def __init__(self, creds: SentryCredentials) -> None:
        self.current = creds

    def credentials(self, connection_id: str) -> SentryCredentials | None:
        return self.current

    async def request_refresh(self, connection_id: str, rejected: SentryCredentials) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _opened(issue: str, installation: str) -> Any:
    incident_id = str(uuid.uuid4())
    p = IncidentOpenedV1(
        incident_id=incident_id,
        tenant_id="t",
        service_id="s",
        source="sentry_issue",
        severity="sev2",
        status_at=T0,
        sentry=SentryRef(connection_id="c", issue_id=issue, installation_uuid=installation),
        snapshot=IssueSnapshot(title="x"),
    )
    return new_event(p, key=incident_id, tenant="t")


def _record(env: Any) -> Any:
    from aiokafka import ConsumerRecord
    from blametrail_common.events import encode

    value = encode(env)
    return ConsumerRecord("incident-events", 0, 0, 0, 0, env.key.encode(), value, None, 0, 0, ())


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _read(kafka: KafkaSettings, topic: str) -> list[Any]:
    consumer = create_consumer(kafka, [topic], group_id=None)
    await consumer.start()
    try:
        return [r for b in (await consumer.getmany(timeout_ms=3000)).values() for r in b]
    finally:
        await consumer.stop()


def _link_calls(stub: StubState) -> int:
    return sum(1 for r in stub.requests if r["route"] == "external_issues")


async def test_a_refused_installation_is_reported_once_then_links_once_fixed(
    kafka_settings: KafkaSettings, caplog: pytest.LogCaptureFixture
) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"l{uuid.uuid4().hex[:6]}."
    )
    await ensure_topics(kafka)
    stub, clock = StubState(), Clock()
    token = stub.add_internal_token("acme")
    known, unknown = str(uuid.uuid4()), str(uuid.uuid4())
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    failed0 = _sample("blametrail_sentry_links_total", outcome="failed")
    broken0 = _sample("blametrail_sentry_link_broken_total", cause="not_found")
    caplog.set_level(logging.INFO, logger="blametrail_enricher.pipeline")
    try:
        # The service's own client (blametrail_enricher.http): aiohttp, the pool it sizes.
        async with serve(stub) as url, sentry_client(EnricherSettings()) as http:
            api = AiohttpSentryApi(http, RetryPolicy(base_delay_s=0.01))
            creds = Creds(SentryCredentials(url, "acme", token))
            enricher = Enricher(
                api, creds, producer, links=api, now_s=clock, broken_links=BrokenLinks(3600)
            )
            # The stand-in does not know the installation these webhooks name (the bug under
            # `make up`): 25 incidents, one link call, one report.
            await enricher.handle([_record(_opened(str(5000 + i), unknown)) for i in range(25)])
            assert _link_calls(stub) == 1
            assert _sample("blametrail_sentry_links_total", outcome="failed") - failed0 == 1
            assert _sample("blametrail_sentry_link_broken_total", cause="not_found") - broken0 == 1
            reports = [r for r in caplog.records if "links broken" in r.getMessage()]
            assert len(reports) == 1
            assert reports[0].installation == unknown  # type: ignore[attr-defined]
            # Another installation is not held back by it.
            stub.add_internal_installation("acme", known, token)
            await enricher.handle([_record(_opened("6001", known))])
            assert _link_calls(stub) == 2
            # Registered in the stand-in now, but remembered broken: no call until the delay...
            stub.add_internal_installation("acme", unknown, "second-token")
            await enricher.handle([_record(_opened("5100", unknown))])
            assert _link_calls(stub) == 2
            # ...or a new token (the person fixed the connection): it links, once per incident.
            creds.current = SentryCredentials(url, "acme", "second-token")
            await enricher.handle([_record(_opened("5101", unknown))])
            assert _link_calls(stub) == 3
            assert any("links work again" in r.getMessage() for r in caplog.records)
            # After the delay a broken one is tried again, and failing for the same cause is no
            # new report.
            del stub.installations[unknown]
            await enricher.handle([_record(_opened("5102", unknown))])
            clock.now += 3601
            await enricher.handle([_record(_opened("5103", unknown))])
            await enricher.handle([_record(_opened("5104", unknown))])
            assert _link_calls(stub) == 5
            assert len([r for r in caplog.records if "links broken" in r.getMessage()]) == 2
    finally:
        await producer.stop()
    outputs = [decode(r.value).payload for r in await _read(kafka, "incident-enrichments")]
    linked = [p for p in outputs if isinstance(p, IncidentLinkedV1)]
    assert sorted(p.sentry_issue_id for p in linked) == ["5101", "6001"]
    assert len([p for p in outputs if isinstance(p, IncidentEnrichedV1)]) == 31
    # The link a person follows from the Sentry issue opens the incident's page (by default).
    pages = sorted(PAGE.format(incident_id=p.incident_id) for p in linked)
    assert sorted(p.incident_url for p in linked) == pages
    assert sorted(i["webUrl"] for i in stub.external_issues.values()) == pages


def test_the_settings_and_the_pipeline_default_to_the_incident_page() -> None:
    default = EnricherSettings.model_fields["incident_url"].default
    (field,) = (f for f in dataclasses.fields(Enricher) if f.name == "incident_url")
    assert default == field.default == PAGE


def test_link_causes() -> None:
    from blametrail_common.sentry_api import GaveUp, NotFound, SentryApiError, TokenRejected

    assert link_cause(NotFound("POST x: 404")) == "not_found"
    assert link_cause(TokenRejected("POST x: 401, token rejected")) == "token_rejected"
    assert link_cause(SentryApiError("POST x: 403 no event:write")) == "forbidden"
    assert link_cause(SentryApiError("POST x: 400 bad")) == "refused"
    assert link_cause(GaveUp("gave up")) == "unanswered"
    links = BrokenLinks(10, limit=2)
    for i in range(5):
        links.broke("c", f"i{i}", "tok", "not_found", "404", 0.0)
    assert len(links) == 2  # bounded


async def test_the_sentry_pool_is_the_http_connections_setting() -> None:
    # 25 calls at once per endpoint, three endpoints
    assert EnricherSettings.model_fields["http_connections"].default == 75
    async with sentry_client(EnricherSettings(http_connections=7)) as http:
        assert http.connector is not None
        assert http.connector.limit == 7
