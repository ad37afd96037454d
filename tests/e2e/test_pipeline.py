"""End to end on real Kafka and Postgres, with the Sentry stand-in: a signed webhook posted to
ingest becomes an incident with its enrichment in the API; a resolve webhook resolves it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.events import ConnectionStateV1
from blametrail_common.kafka import EventProducer, consume, create_consumer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.kafka.pgsink import run_into_postgres
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.sentry_api import HttpxSentryApi, RetryPolicy
from blametrail_common.settings import KafkaSettings
from blametrail_common.signature import sign
from blametrail_common.testing import background, signed_fixture
from blametrail_common.topics import topic_name
from blametrail_devstack.ingest_testing import make_settings, running_ingest
from blametrail_enricher.credentials import ConnectionCredentials
from blametrail_enricher.pipeline import Enricher
from blametrail_ingest.connections import ConnectionSecrets
from blametrail_mappings_api.app import create_app
from blametrail_mappings_api.repository import Repository, create_pool
from blametrail_mappings_api.settings import ApiSettings
from blametrail_mappings_api.store.outbox import Relay
from blametrail_normalizer.app import create_app as create_normalizer
from blametrail_normalizer.settings import NormalizerSettings
from blametrail_projector.projection import PROJECTED_TOPICS, Projection
from blametrail_sentry_stub import Fault, StubState, serve
from blametrail_sentry_stub.state import Installation

CLIENT_SECRET = "e2e-client-secret"
INSTALL = "7d1f2c3a-9b8e-4f6d-a1c2-3e4f5a6b7c8d"  # the fixtures' installation uuid


async def test_webhook_to_enriched_incident_then_resolved(
    kafka_settings: KafkaSettings, database_url: str, tmp_path: Any
) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"e{uuid.uuid4().hex[:6]}."
    )
    await ensure_topics(kafka)
    box = SecretBox(generate_key())
    stub = StubState()
    stub.faults += [Fault("latest_event", "503", count=2), Fault("tags", "429")]
    pool = create_pool(database_url, 4)
    await pool.open()
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    repo = Repository(pool, box)
    api = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(ApiSettings(), repo, {})),
        base_url="http://api",
    )
    key = await repo.create_api_key(f"e2e-{uuid.uuid4().hex[:6]}")
    auth = {"Authorization": f"Bearer {key}"}
    async with serve(stub) as stub_url:
        token = stub.add_internal_token("acme")
        # The internal integration's installation (its uuid is in every webhook): the token
        # belongs to it, so the enricher may show the incident on the Sentry issue.
        stub.installations[INSTALL] = Installation(INSTALL, "acme", "cid", "csecret", "installed")
        stub.tokens[token].installation = INSTALL
        conn = (
            await api.post(
                "/api/v1/integrations/sentry/connections",
                headers=auth,
                json={
                    "mode": "internal",
                    "sentry_org_slug": "acme",
                    "api_base_url": stub_url,
                    "client_secret": CLIENT_SECRET,
                    "auth_token": token,
                },
            )
        ).json()["id"]
        svc = (
            await api.post(
                "/api/v1/services", headers=auth, json={"name": "Checkout", "slug": "checkout"}
            )
        ).json()["id"]
        mapped = await api.post(
            "/api/v1/integrations/sentry/mappings",
            headers=auth,
            json={"connection_id": conn, "sentry_project_slug": "checkout-api", "service_id": svc},
        )
        assert mapped.status_code == 201
        relay = Relay(pool, producer)
        async with pool.connection() as c:  # only this test's changes go to this test's topics
            await c.execute(
                "UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL AND key NOT IN (%s, %s, %s)",
                (conn.encode(), svc.encode(), f"{conn}:checkout-api".encode()),
            )
        while await relay.relay_once():
            pass

        ingest_table = CompactedTable(kafka, "cp-connections", ConnectionStateV1)
        enricher_table = CompactedTable(kafka, "cp-connections", ConnectionStateV1)
        await ingest_table.start()
        await enricher_table.start()
        normalizer = create_normalizer(
            NormalizerSettings(app_id=f"e2e-norm-{uuid.uuid4().hex[:6]}"), kafka
        )
        normalizer.app.finalize()
        await normalizer.app.start()
        http = httpx.AsyncClient()
        sentry_api = HttpxSentryApi(http, RetryPolicy(base_delay_s=0.05, max_rate_limit_wait_s=10))
        enricher = Enricher(
            sentry_api,
            ConnectionCredentials(enricher_table, box),
            producer,
            links=sentry_api,
            incident_url="https://blametrail.example/incidents/{incident_id}",
        )

        async def enrich(stop: asyncio.Event) -> None:
            group = f"e2e-enricher-{uuid.uuid4().hex[:6]}"
            await consume(kafka, ["incident-events"], group, enricher.handle, stop)

        async def project(stop: asyncio.Event) -> None:
            consumer = create_consumer(kafka, [], f"e2e-projection-{uuid.uuid4().hex[:6]}")
            await consumer.start()
            try:
                topics = [topic_name(t, kafka.topic_prefix) for t in PROJECTED_TOPICS]
                await run_into_postgres(
                    consumer,
                    topics,
                    database_url,
                    "e2e-projection",
                    Projection(producer).apply,
                    stop,
                )
            finally:
                await consumer.stop()

        try:
            async with (
                background(enrich, project),
                running_ingest(
                    kafka, make_settings(tmp_path), ConnectionSecrets(ingest_table, box)
                ) as (ingest_url, _),
                httpx.AsyncClient(base_url=ingest_url) as hooks,
            ):
                for name in ("issue.created", "issue.resolved"):
                    body, headers = signed_fixture(name)
                    headers = {**headers, "Sentry-Hook-Signature": sign(body, CLIENT_SECRET)}
                    assert (
                        await hooks.post(f"/webhooks/sentry/{conn}", content=body, headers=headers)
                    ).status_code == 200
                    if name == "issue.created":
                        incident = await _wait_for(
                            api,
                            auth,
                            lambda i: (
                                i["enrichment"] is not None
                                and i["enrichment"]["status"] == "enriched"
                                and i["sentry_links"]
                            ),
                        )
                        assert incident["status"] == "open"
                        assert incident["service_id"] == svc
                        assert incident["sentry"]["short_id"] == "CHECKOUT-API-3K"
                        e = incident["enrichment"]
                        assert e["exceptions"][0]["type"] == "KeyError"
                        assert e["exceptions"][0]["frames"][-1]["function"] == "compute_total"
                        assert any(t["key"] == "release" for t in e["tags"])
                        assert e["user"]["email"] == "zo\u00eb@customer.example"
                        assert e["breadcrumbs"]
                        (link,) = incident["sentry_links"]
                        (made,) = stub.external_issues.values()
                        assert link["external_issue_id"] == made["id"]
                        assert link["web_url"] == "https://acme.sentry.io/issues/5912345678/"
                        assert made["issueId"] == "5912345678"
                        assert made["webUrl"] == (
                            f"https://blametrail.example/incidents/{incident['incident_id']}"
                        )
                resolved = await _wait_for(api, auth, lambda i: i["status"] == "resolved")
        finally:
            await normalizer.close()
            await ingest_table.stop()
            await enricher_table.stop()
            await http.aclose()
    await producer.stop()
    await api.aclose()
    await pool.close()
    assert [t["type"] for t in resolved["timeline"]] == ["incident.opened", "incident.resolved"]
    assert resolved["resolved_at"] is not None
    assert (
        sum(1 for r in stub.requests if r["route"] == "latest_event") == 3
    )  # two 503s, then success


async def _wait_for(
    api: httpx.AsyncClient, auth: dict[str, str], ready: Any, timeout_s: float = 60
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        items = (await api.get("/api/v1/incidents", headers=auth)).json()["items"]
        if items:
            incident = (
                await api.get(f"/api/v1/incidents/{items[0]['incident_id']}", headers=auth)
            ).json()
            if ready(incident):
                return dict(incident)
        await asyncio.sleep(0.2)
    pytest.fail("the incident did not reach the expected state in time")
