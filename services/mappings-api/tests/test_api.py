"""The control plane over real Postgres (and Kafka for the outbox). One test per product rule."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.events import decode
from blametrail_common.kafka import EventProducer, create_consumer, create_producer
from blametrail_common.settings import KafkaSettings
from blametrail_mappings_api.app import ENDPOINTS, create_app
from blametrail_mappings_api.repository import Pool, Repository, create_pool
from blametrail_mappings_api.settings import ApiSettings
from blametrail_mappings_api.store.outbox import Relay

SECRET, TOKEN = "client-secret-do-not-leak", "sntrys_token_do_not_leak"


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    p = create_pool(database_url, 4)
    await p.open()
    yield p
    await p.close()


@pytest.fixture
async def api(pool: Pool) -> AsyncIterator[tuple[httpx.AsyncClient, Repository]]:
    repo = Repository(pool, SecretBox(generate_key()))
    app = create_app(ApiSettings(public_ingest_url="https://hooks.example"), repo, {})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as client:
        yield client, repo


async def _org(api: tuple[httpx.AsyncClient, Repository]) -> dict[str, str]:
    key = await api[1].create_api_key(f"org-{uuid.uuid4().hex[:8]}")
    return {"Authorization": f"Bearer {key}"}


async def _setup(
    client: httpx.AsyncClient, auth: dict[str, str], services: int = 1
) -> tuple[str, list[str]]:
    conn = await client.post(
        "/api/v1/integrations/sentry/connections",
        headers=auth,
        json={
            "mode": "internal",
            "sentry_org_slug": f"acme-{uuid.uuid4().hex[:6]}",
            "client_secret": SECRET,
            "auth_token": TOKEN,
        },
    )
    assert conn.status_code == 201, conn.text
    ids = []
    for i in range(services):
        svc = await client.post(
            "/api/v1/services", headers=auth, json={"name": f"Service {i}", "slug": f"svc-{i}"}
        )
        assert svc.status_code == 201, svc.text
        ids.append(svc.json()["id"])
    return conn.json()["id"], ids


async def _map(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    conn: str,
    slug: str,
    service: str,
    **extra: Any,
) -> httpx.Response:
    return await client.post(
        "/api/v1/integrations/sentry/mappings",
        headers=auth,
        json={"connection_id": conn, "sentry_project_slug": slug, "service_id": service, **extra},
    )


async def test_adding_a_mapping_routes_a_sentry_project_to_a_service(api: Any) -> None:
    client, auth = api[0], await _org(api)
    conn, (svc,) = await _setup(client, auth)
    created = await _map(client, auth, conn, "payments-api", svc)
    assert created.status_code == 201
    body = created.json()
    assert (body["sentry_project_slug"], body["service_id"], body["active"]) == (
        "payments-api",
        svc,
        True,
    )
    listed = (await client.get("/api/v1/integrations/sentry/mappings", headers=auth)).json()[
        "items"
    ]
    assert [m["id"] for m in listed] == [body["id"]]


async def test_disabling_a_mapping_keeps_its_configuration_and_it_can_be_re_enabled(
    api: Any,
) -> None:
    client, auth = api[0], await _org(api)
    conn, (svc,) = await _setup(client, auth)
    mid = (await _map(client, auth, conn, "internal-tools", svc)).json()["id"]
    off = await client.patch(
        f"/api/v1/integrations/sentry/mappings/{mid}", headers=auth, json={"active": False}
    )
    assert (off.json()["active"], off.json()["service_id"], off.json()["sentry_project_slug"]) == (
        False,
        svc,
        "internal-tools",
    )
    inactive = await client.get("/api/v1/integrations/sentry/mappings?active=false", headers=auth)
    assert [m["id"] for m in inactive.json()["items"]] == [mid]
    on = await client.patch(
        f"/api/v1/integrations/sentry/mappings/{mid}", headers=auth, json={"active": True}
    )
    assert on.json()["active"] is True


async def test_editing_a_mapping_routes_to_the_new_service(api: Any) -> None:
    client, auth = api[0], await _org(api)
    conn, (a, b) = await _setup(client, auth, services=2)
    mid = (await _map(client, auth, conn, "frontend", a)).json()["id"]
    edited = await client.patch(
        f"/api/v1/integrations/sentry/mappings/{mid}", headers=auth, json={"service_id": b}
    )
    assert edited.json()["service_id"] == b
    # Existing incidents are not moved: the control plane only publishes the new state; the
    # normalizer applies it to webhooks that arrive afterwards (see the normalizer's stream test).


async def test_deleting_a_mapping_is_permanent(api: Any) -> None:
    client, auth = api[0], await _org(api)
    conn, (svc,) = await _setup(client, auth)
    mid = (await _map(client, auth, conn, "email-worker", svc)).json()["id"]
    assert (
        await client.delete(f"/api/v1/integrations/sentry/mappings/{mid}", headers=auth)
    ).status_code == 204
    assert (
        await client.get(f"/api/v1/integrations/sentry/mappings/{mid}", headers=auth)
    ).status_code == 404
    assert (
        await client.delete(f"/api/v1/integrations/sentry/mappings/{mid}", headers=auth)
    ).status_code == 404
    again = await _map(
        client, auth, conn, "email-worker", svc
    )  # a new mapping may be created later
    assert again.status_code == 201
    assert again.json()["id"] != mid


async def test_multiple_sentry_projects_may_map_to_one_service(api: Any) -> None:
    client, auth = api[0], await _org(api)
    conn, (svc,) = await _setup(client, auth)
    for slug in ("api-auth", "api-core"):
        assert (await _map(client, auth, conn, slug, svc)).status_code == 201
    listed = await client.get(
        f"/api/v1/integrations/sentry/mappings?service_id={svc}", headers=auth
    )
    assert sorted(m["sentry_project_slug"] for m in listed.json()["items"]) == [
        "api-auth",
        "api-core",
    ]


async def test_each_sentry_project_maps_to_only_one_service_at_a_time(api: Any) -> None:
    client, auth = api[0], await _org(api)
    conn, (a, b) = await _setup(client, auth, services=2)
    first = (await _map(client, auth, conn, "payments-api", a)).json()
    dup = await _map(client, auth, conn, "payments-api", b)
    assert dup.status_code == 409
    assert dup.json()["existing"]["id"] == first["id"]
    assert dup.json()["existing"]["service_id"] == a


async def test_a_service_with_mappings_cannot_be_deleted(api: Any) -> None:
    client, auth = api[0], await _org(api)
    conn, (svc,) = await _setup(client, auth)
    await _map(client, auth, conn, "checkout-api", svc)
    refused = await client.delete(f"/api/v1/services/{svc}", headers=auth)
    assert refused.status_code == 409
    assert "checkout-api" in refused.json()["message"]


async def test_pagination_is_stable_and_complete(api: Any) -> None:
    client, auth = api[0], await _org(api)
    conn, (svc,) = await _setup(client, auth)
    slugs = [f"p{i:02d}" for i in range(7)]
    for slug in slugs:
        await _map(client, auth, conn, slug, svc)
    seen, cursor = [], None
    while True:
        page = (
            await client.get(
                "/api/v1/integrations/sentry/mappings",
                headers=auth,
                params={"limit": 3, **({"cursor": cursor} if cursor else {})},
            )
        ).json()
        seen += [m["sentry_project_slug"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == slugs


async def test_tenant_isolation(api: Any) -> None:
    client = api[0]
    auth_a, auth_b = await _org(api), await _org(api)
    conn, (svc,) = await _setup(client, auth_a)
    mid = (await _map(client, auth_a, conn, "secret-project", svc)).json()["id"]
    for path in (
        f"/api/v1/services/{svc}",
        f"/api/v1/integrations/sentry/connections/{conn}",
        f"/api/v1/integrations/sentry/mappings/{mid}",
    ):
        assert (await client.get(path, headers=auth_b)).status_code == 404
        assert (await client.patch(path, headers=auth_b, json={})).status_code == 404
        assert (await client.delete(path, headers=auth_b)).status_code == 404
    for path in (
        "/api/v1/services",
        "/api/v1/integrations/sentry/mappings",
        "/api/v1/integrations/sentry/connections",
    ):
        assert (await client.get(path, headers=auth_b)).json()["items"] == []
    foreign = await _map(client, auth_b, conn, "x", svc)
    assert foreign.status_code == 422  # B cannot map A's connection to A's service
    assert (await client.get(f"/api/v1/services/{svc}", headers=auth_a)).status_code == 200


async def test_errors_are_clear(api: Any) -> None:
    client, auth = api[0], await _org(api)
    assert (await client.get("/api/v1/services")).status_code == 401
    assert (
        await client.get("/api/v1/services", headers={"Authorization": "Bearer bt_nope_nope"})
    ).status_code == 401
    bad_json = await client.post("/api/v1/services", headers=auth, content=b'{"name": ')
    assert (bad_json.status_code, bad_json.json()["error"]) == (400, "bad_json")
    invalid = await client.post(
        "/api/v1/services", headers=auth, json={"name": "", "slug": "Bad Slug!"}
    )
    assert invalid.status_code == 422
    assert {f["field"] for f in invalid.json()["fields"]} == {"name", "slug"}
    assert (await client.get(f"/api/v1/services/{uuid.uuid4()}", headers=auth)).status_code == 404
    assert (await client.get("/api/v1/services/not-a-uuid", headers=auth)).status_code == 404
    plain = await client.post(
        "/api/v1/integrations/sentry/connections",
        headers=auth,
        json={
            "mode": "internal",
            "sentry_org_slug": "acme",
            "api_base_url": "http://sentry.example",
            "client_secret": "s",
            "auth_token": "t",
        },
    )
    assert plain.status_code == 422
    assert plain.json()["fields"][0]["field"] == "api_base_url"
    oauth = await client.post(
        "/api/v1/integrations/sentry/connections",
        headers=auth,
        json={"mode": "oauth", "sentry_org_slug": "acme", "client_secret": "s", "auth_token": "t"},
    )
    assert oauth.status_code == 422
    await client.post("/api/v1/services", headers=auth, json={"name": "A", "slug": "dup"})
    assert (
        await client.post("/api/v1/services", headers=auth, json={"name": "B", "slug": "dup"})
    ).status_code == 409
    assert (
        await client.get("/api/v1/integrations/sentry/mappings?limit=0", headers=auth)
    ).status_code == 422


async def test_null_and_nul_are_refused_with_422_not_500(api: Any) -> None:
    """PATCH with an explicit null for a field that cannot be empty, and a NUL character in any
    text or parameter, reached Postgres and answered 500 (found by the schemathesis run)."""
    client, auth = api[0], await _org(api)
    conn, (svc,) = await _setup(client, auth)
    for path, body in (
        (f"/api/v1/services/{svc}", {"name": None}),
        (f"/api/v1/integrations/sentry/connections/{conn}", {"enabled": None}),
    ):
        resp = await client.patch(path, headers=auth, json=body)
        assert resp.status_code == 422, resp.text
        assert "cannot be null" in resp.json()["fields"][0]["message"]
    named = await client.post(
        "/api/v1/services", headers=auth, json={"name": "A\u0000B", "slug": "nul"}
    )
    assert named.status_code == 422, named.text
    assert "NUL" in named.json()["fields"][0]["message"]
    described = await client.patch(
        f"/api/v1/services/{svc}", headers=auth, json={"description": "x\x00"}
    )
    assert described.status_code == 422
    for url in (
        "/api/v1/incidents?service=a%00b",
        "/api/v1/integrations/sentry/audit?reason=%00",
        "/api/v1/services/%00",
    ):
        resp = await client.get(url, headers=auth)
        assert resp.status_code == 422, (url, resp.text)
        assert resp.json()["error"] == "validation"
    assert (await client.get(f"/api/v1/services/{svc}", headers=auth)).json()["name"] == "Service 0"


async def test_secrets_are_write_only_and_never_logged(
    api: Any, caplog: pytest.LogCaptureFixture, pool: Pool
) -> None:
    caplog.set_level(logging.DEBUG)
    client, auth = api[0], await _org(api)
    conn, _ = await _setup(client, auth)
    got = await client.get(f"/api/v1/integrations/sentry/connections/{conn}", headers=auth)
    body = got.text
    assert got.json()["webhook_url"] == f"https://hooks.example/webhooks/sentry/{conn}"
    assert got.json()["client_secrets_set"] == 1
    assert got.json()["auth_token_set"] is True
    rotated = await client.patch(
        f"/api/v1/integrations/sentry/connections/{conn}",
        headers=auth,
        json={"client_secret": "second-secret"},
    )
    assert rotated.json()["client_secrets_set"] == 2
    assert SECRET not in body + rotated.text + caplog.text
    assert TOKEN not in body + rotated.text + caplog.text
    async with pool.connection() as c:
        row = await (
            await c.execute(
                "SELECT client_secrets_enc, auth_token_enc FROM sentry_connections WHERE id = %s",
                (conn,),
            )
        ).fetchone()
    assert row is not None
    assert SECRET not in str(row)
    assert TOKEN not in str(row)


async def test_openapi_lists_every_route_and_docs_render(api: Any) -> None:
    client = api[0]
    doc = (await client.get("/openapi.json")).json()
    listed = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert listed == {(e.method, e.path) for e in ENDPOINTS}
    assert "MappingCreate" in doc["components"]["schemas"]
    page = await client.get("/docs")
    assert page.status_code == 200
    assert "/api/v1/integrations/sentry/mappings" in page.text


async def _topic_latest(
    kafka: KafkaSettings, topic: str, n: int
) -> tuple[list[Any], dict[bytes, Any]]:
    consumer = create_consumer(kafka, [topic], group_id=None)
    await consumer.start()
    records: list[Any] = []
    try:
        for _ in range(40):
            for batch in (await consumer.getmany(timeout_ms=250)).values():
                records.extend(batch)
            if len(records) >= n:
                break
    finally:
        await consumer.stop()
    latest = {r.key: (decode(r.value).payload if r.value is not None else None) for r in records}
    return records, latest


class CrashingRelay(Relay):
    async def _mark_sent(self, conn: Any, ids: list[int]) -> None:
        raise RuntimeError("killed between publish and mark")


async def test_outbox_relay_publishes_state_and_survives_a_crash(
    api: Any, pool: Pool, kafka_settings: KafkaSettings
) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"o{uuid.uuid4().hex[:6]}."
    )
    from blametrail_common.kafka.admin import ensure_topics

    await ensure_topics(kafka)
    async with pool.connection() as c:
        await c.execute(
            "UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL"
        )  # earlier tests' rows
    client, auth = api[0], await _org(api)
    conn, (svc,) = await _setup(client, auth)
    mid = (await _map(client, auth, conn, "payments-api", svc)).json()["id"]
    await client.patch(
        f"/api/v1/integrations/sentry/mappings/{mid}", headers=auth, json={"active": False}
    )
    gone = (await _map(client, auth, conn, "legacy", svc)).json()["id"]
    await client.delete(f"/api/v1/integrations/sentry/mappings/{gone}", headers=auth)

    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    try:
        with pytest.raises(RuntimeError, match="killed"):
            await CrashingRelay(pool, producer).relay_once()
        async with pool.connection() as c:
            unsent = await (
                await c.execute("SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL")
            ).fetchone()
        assert unsent is not None
        assert unsent["n"] == 6  # connection, service, 4 mapping changes: none marked, none lost
        assert await Relay(pool, producer).relay_once() == 6
        assert await Relay(pool, producer).relay_once() == 0
    finally:
        await producer.stop()
    records, latest = await _topic_latest(kafka, "cp-mappings", 8)
    assert len(records) == 8  # 4 rows twice: duplicates after the crash, harmless
    state = latest[f"{conn}:payments-api".encode()]
    assert (state.active, state.service_id, state.mapping_id) == (False, svc, mid)
    assert latest[f"{conn}:legacy".encode()] is None  # tombstone
    _, connections = await _topic_latest(kafka, "cp-connections", 2)
    published = connections[conn.encode()]
    assert published.mode == "internal"
    assert SECRET not in published.model_dump_json()
    assert TOKEN not in published.model_dump_json()
    await asyncio.sleep(0)
