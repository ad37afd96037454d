"""Deploys from Sentry: the pure mapping, the import command's path against the Sentry stand-in,
and the store of deploys the suspects worker found, on the real Postgres."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka import ConsumerRecord
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.events import encode, new_event
from blametrail_common.events.deploys import DeployRecordedV1, deploy_id_for
from blametrail_mappings_api.app import create_app
from blametrail_mappings_api.repository import Pool, Repository, create_pool
from blametrail_mappings_api.sentry.deploy_import import (
    SentryDeployStore,
    deploys_from_release,
    import_from_sentry,
)
from blametrail_mappings_api.settings import ApiSettings
from blametrail_sentry_stub.server import serve
from blametrail_sentry_stub.state import StubState

RELEASE = {
    "version": "checkout-api@2.14.0",
    "ref": "9c4e1a7b2f6d",
    "projects": [{"slug": "checkout-api"}, {"slug": "unmapped-web"}],
}
DEPLOYS = [
    {
        "id": "1",
        "environment": "production",
        "dateStarted": "2026-03-14T08:55:01Z",
        "dateFinished": "2026-03-14T08:58:40Z",
        "url": "https://ci.example/4411",
    },
    {"id": "2", "environment": "staging", "dateStarted": None, "dateFinished": None},
]


def test_sentry_deploys_become_deploys_of_mapped_services_only() -> None:
    bodies = deploys_from_release(RELEASE, DEPLOYS, {"checkout-api": "svc-1"})
    assert bodies == [
        {
            "service_id": "svc-1",
            "version": "checkout-api@2.14.0",
            "environment": "production",
            "commit_sha": "9c4e1a7b2f6d",
            "started_at": datetime(2026, 3, 14, 8, 55, 1, tzinfo=UTC),
            "finished_at": datetime(2026, 3, 14, 8, 58, 40, tzinfo=UTC),
            "author": None,
            "url": "https://ci.example/4411",
            "changed_paths": None,
            "source": "sentry",
        }
    ]  # the deploy without times is skipped; the unmapped project gives nothing
    assert deploys_from_release(RELEASE, DEPLOYS, {}) == []


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    p = create_pool(database_url, 4)
    await p.open()
    yield p
    await p.close()


async def _tenant(repo: Repository, client: httpx.AsyncClient, api_base: str) -> dict[str, Any]:
    key = await repo.create_api_key(f"org-{uuid.uuid4().hex[:8]}")
    auth = {"Authorization": f"Bearer {key}"}
    conn = await client.post(
        "/api/v1/integrations/sentry/connections",
        headers=auth,
        json={
            "mode": "internal",
            "sentry_org_slug": "acme",
            "api_base_url": api_base,
            "client_secret": "s" * 32,
            "auth_token": "stub-token",
        },
    )
    assert conn.status_code == 201, conn.text
    svc = await client.post(
        "/api/v1/services", headers=auth, json={"name": "C", "slug": "checkout"}
    )
    mapping = await client.post(
        "/api/v1/integrations/sentry/mappings",
        headers=auth,
        json={
            "connection_id": conn.json()["id"],
            "sentry_project_slug": "checkout-api",
            "service_id": svc.json()["id"],
        },
    )
    assert mapping.status_code == 201, mapping.text
    org = await _org_of(repo, svc.json()["id"])
    return {"auth": auth, "conn": conn.json()["id"], "svc": svc.json()["id"], "org": org}


async def _org_of(repo: Repository, service_id: str) -> str:
    async with repo.pool.connection() as c:
        row = await (
            await c.execute("SELECT org_id FROM services WHERE id = %s", (service_id,))
        ).fetchone()
    assert row is not None
    return str(row["org_id"])


async def test_import_records_sentry_deploys_once_and_lists_them(pool: Pool) -> None:
    repo = Repository(pool, SecretBox(generate_key()))
    app = create_app(ApiSettings(public_ingest_url="https://hooks.example"), repo, {})
    state = StubState()
    state.add_internal_token("acme", "stub-token")
    state.releases["acme"] = [RELEASE, {"version": "web@1", "projects": [{"slug": "unmapped-web"}]}]
    state.deploys[("acme", "checkout-api@2.14.0")] = DEPLOYS
    state.deploys[("acme", "web@1")] = DEPLOYS[:1]
    async with (
        serve(state) as stub,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client,
        httpx.AsyncClient() as http,
    ):
        t = await _tenant(repo, client, stub)
        first = await import_from_sentry(repo, http, t["org"], t["conn"])
        assert (first.releases, first.deploys_seen, first.recorded, first.unmapped_releases) == (
            2,
            3,
            1,
            1,
        )
        again = await import_from_sentry(repo, http, t["org"], t["conn"], ["checkout-api@2.14.0"])
        assert again.recorded == 1
        listed = (await client.get("/api/v1/deploys", headers=t["auth"])).json()["items"]
    assert [(d["version"], d["source"], d["environment"]) for d in listed] == [
        ("checkout-api@2.14.0", "sentry", "production")
    ]  # imported twice, recorded once
    started = datetime(2026, 3, 14, 8, 55, 1, tzinfo=UTC)
    assert listed[0]["id"] == deploy_id_for(
        t["org"], t["svc"], "production", "checkout-api@2.14.0", started
    )


async def test_the_store_keeps_deploys_the_suspects_worker_imported(pool: Pool) -> None:
    repo = Repository(pool, SecretBox(generate_key()))
    app = create_app(ApiSettings(public_ingest_url="https://hooks.example"), repo, {})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as client:
        t = await _tenant(repo, client, "https://sentry.io")
        at = datetime(2026, 3, 14, 8, 58, tzinfo=UTC)

        def record(tenant: str, source: str) -> Any:
            p = DeployRecordedV1(
                deploy_id=deploy_id_for(tenant, t["svc"], "production", f"v-{source}", at),
                tenant_id=tenant,
                service_id=t["svc"],
                version=f"v-{source}",
                environment="production",
                commit_sha=None,
                started_at=None,
                finished_at=at,
                source=source,  # type: ignore[arg-type]
                recorded_at=at,
            )
            value = encode(new_event(p, key=p.deploy_id))
            return ConsumerRecord("deploys", 0, 0, 0, 0, None, value, None, 0, len(value), [])

        other_tenant = str(uuid.uuid4())
        junk = ConsumerRecord("deploys", 0, 1, 0, 0, None, b"junk", None, 0, 4, [])
        batch = [
            record(t["org"], "sentry"),
            record(t["org"], "api"),
            record(other_tenant, "sentry"),
            junk,
        ]
        store = SentryDeployStore(pool)
        await store.handle(batch)
        await store.handle(batch)  # redelivered: no duplicate
        listed = (await client.get("/api/v1/deploys", headers=t["auth"])).json()["items"]
    # Only the Sentry import of this tenant's own service: API deploys come through the outbox,
    # and a record naming another tenant never lands on this tenant's service.
    assert [d["version"] for d in listed] == ["v-sentry"]
