"""A connection's Sentry side over HTTP: the check of a new internal connection (one call to
Sentry, its refusal a 400 with Sentry's words), its projects as Sentry lists them (every page;
502 when Sentry cannot answer), and its health from the read model's tables. Against real
Postgres and the Sentry stand-in served over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_mappings_api.app import create_app
from blametrail_mappings_api.repository import Pool, Repository, create_pool
from blametrail_mappings_api.settings import ApiSettings
from blametrail_sentry_stub import Fault, StubState, serve


@dataclass
class Env:
    client: httpx.AsyncClient
    repo: Repository
    stub: StubState
    stub_url: str


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    p = create_pool(database_url, 4)
    await p.open()
    yield p
    await p.close()


@pytest.fixture
async def env(pool: Pool) -> AsyncIterator[Env]:
    repo = Repository(pool, SecretBox(generate_key()))
    stub = StubState()
    async with serve(stub) as url, httpx.AsyncClient() as sentry_http:
        app = create_app(
            ApiSettings(public_ingest_url="https://hooks.example"),
            repo,
            {},
            sentry_http=sentry_http,
            verify_connections=True,
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api"
        ) as client:
            yield Env(client, repo, stub, url)


async def _org(env: Env) -> dict[str, str]:
    key = await env.repo.create_api_key(f"org-{uuid.uuid4().hex[:8]}")
    return {"Authorization": f"Bearer {key}"}


async def _connect(env: Env, auth: dict[str, str], org: str, token: str) -> httpx.Response:
    return await env.client.post(
        "/api/v1/integrations/sentry/connections",
        headers=auth,
        json={
            "mode": "internal",
            "sentry_org_slug": org,
            "api_base_url": env.stub_url,
            "client_secret": "s" * 32,
            "auth_token": token,
        },
    )


async def test_a_new_internal_connection_is_checked_with_sentry_before_it_is_saved(
    env: Env,
) -> None:
    auth = await _org(env)
    org = f"acme-{uuid.uuid4().hex[:6]}"
    refused = await _connect(env, auth, org, "not-a-token-sentry-knows")
    assert refused.status_code == 400
    assert refused.json() == {
        "error": "sentry_refused",
        "message": "Sentry answered 401: Invalid token",
    }
    other_org = env.stub.add_internal_token("someone-else")
    wrong_org = await _connect(env, auth, org, other_org)
    assert wrong_org.status_code == 400
    assert "permission" in wrong_org.json()["message"]
    listed = await env.client.get("/api/v1/integrations/sentry/connections", headers=auth)
    assert listed.json()["items"] == []  # nothing saved
    env.stub.faults.append(Fault("projects", "503"))
    down = await _connect(env, auth, org, env.stub.add_internal_token(org))
    assert (down.status_code, down.json()["error"]) == (502, "sentry")
    ok = await _connect(env, auth, org, env.stub.add_internal_token(org))
    assert ok.status_code == 201, ok.text
    calls = [r for r in env.stub.requests if r["route"] == "projects"]
    assert len(calls) == 4  # one call per attempt


async def test_a_connections_projects_are_listed_from_sentry_and_a_502_when_they_cannot_be(
    env: Env,
) -> None:
    auth = await _org(env)
    org = f"acme-{uuid.uuid4().hex[:6]}"
    conn = (await _connect(env, auth, org, env.stub.add_internal_token(org))).json()["id"]
    env.stub.projects[org] = [
        {"id": str(1000 + i), "slug": f"p-{i:03d}", "name": f"<b>Project {i}</b>"}
        for i in range(230)
    ]
    path = f"/api/v1/integrations/sentry/connections/{conn}/sentry-projects"
    listed = await env.client.get(path, headers=auth)
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert len(items) == 230  # three pages followed
    assert items[0] == {"id": "1000", "slug": "p-000", "name": "<b>Project 0</b>"}
    env.stub.faults.append(Fault("projects", "500"))
    failed = await env.client.get(path, headers=auth)
    assert failed.status_code == 502
    assert failed.json() == {"error": "sentry", "message": "Sentry answered 500: Internal Error"}
    env.stub.faults.append(Fault("projects", "reset"))
    cut = await env.client.get(path, headers=auth)
    assert cut.status_code == 502
    assert cut.json()["message"].startswith("Sentry could not be reached")
    assert (await env.client.get(path, headers=await _org(env))).status_code == 404


async def _insert(pool: Pool, table: str, values: dict[str, Any]) -> None:
    cols = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    async with pool.connection() as conn:
        await conn.execute(
            f"INSERT INTO {table} ({cols}) VALUES ({marks})".encode(),  # noqa: S608 - ours
            list(values.values()),
        )


async def test_health_counts_what_the_read_model_holds(env: Env, pool: Pool) -> None:
    auth = await _org(env)
    org = f"acme-{uuid.uuid4().hex[:6]}"
    made = (await _connect(env, auth, org, env.stub.add_internal_token(org))).json()
    conn, tenant = made["id"], None
    async with pool.connection() as c:
        row = await (
            await c.execute("SELECT org_id FROM sentry_connections WHERE id = %s", (conn,))
        ).fetchone()
        tenant = str((row or {})["org_id"])
    now = datetime.now(UTC)
    path = f"/api/v1/integrations/sentry/connections/{conn}/health"
    empty = (await env.client.get(path, headers=auth)).json()
    assert empty == {
        "last_webhook_at": None,
        "accepted_24h": 0,
        "ignored_24h": {},
        "last_enrichment_error": None,
        "token_expires_at": None,
        "token_refreshed_at": None,
        "last_sweep": None,
        "webhook_url": f"https://hooks.example/webhooks/sentry/{conn}",
    }
    incident = str(uuid.uuid4())
    for i, (event_type, at) in enumerate(
        [
            ("incident.opened", now - timedelta(hours=30)),  # older than 24 h
            ("incident.updated", now - timedelta(hours=2)),
            ("incident.updated", now - timedelta(minutes=5)),
        ]
    ):
        await _insert(
            pool,
            "incident_timeline",
            {
                "event_id": uuid.uuid4(),
                "incident_id": incident,
                "tenant_id": tenant,
                "event_type": event_type,
                "occurred_at": at,
                "log_partition": 0,
                "log_offset": i,
                "payload": orjson.dumps({"sentry": {"connection_id": conn}}).decode(),
            },
        )
    other_conn = str(uuid.uuid4())  # another connection's: not counted
    for reason, at, connection in [
        ("unmapped", now - timedelta(hours=1), conn),
        ("unmapped", now - timedelta(minutes=1), conn),
        ("inactive", now - timedelta(hours=3), conn),
        ("inactive", now - timedelta(hours=25), conn),
        ("unmapped", now, other_conn),
    ]:
        await _insert(
            pool,
            "webhook_audit",
            {
                "event_id": uuid.uuid4(),
                "tenant_id": tenant,
                "connection_id": connection,
                "reason": reason,
                "received_at": at,
            },
        )
    await _insert(
        pool,
        "incidents",
        {
            "incident_id": incident,
            "tenant_id": tenant,
            "source": "sentry",
            "status": "open",
            "severity": "high",
            "title": "t",
            "sentry": orjson.dumps({"connection_id": conn}).decode(),
            "opened_at": now,
            "state_changed_at": now,
            "updated_at": now,
            "state_order": "1-",
        },
    )
    failed_at = now - timedelta(minutes=7)
    await _insert(
        pool,
        "incident_enrichments",
        {
            "incident_id": incident,
            "tenant_id": tenant,
            "event_id": uuid.uuid4(),
            "status": "failed",
            "reason": "sentry_401",
            "fetched_at": failed_at,
        },
    )
    for started, outcome, repairs in [  # the reconciler's sweeps: the last good one is shown
        (now - timedelta(minutes=10), "ok", '{"resolved": 2, "created": 1}'),
        (now - timedelta(minutes=4), "failed", "{}"),
    ]:
        await _insert(
            pool,
            "reconcile_sweeps",
            {
                "sweep_id": uuid.uuid4(),
                "connection_id": conn,
                "tenant_id": tenant,
                "started_at": started,
                "finished_at": started,
                "outcome": outcome,
                "checked": 40,
                "repairs": repairs,
            },
        )
    health = (await env.client.get(path, headers=auth)).json()
    assert health["last_sweep"]["repairs"] == {"resolved": 2, "created": 1}
    assert health["last_sweep"]["repaired"] == 3
    assert datetime.fromisoformat(health["last_sweep"]["at"]) == now - timedelta(minutes=10)
    assert health["accepted_24h"] == 2
    assert health["ignored_24h"] == {"inactive": 1, "unmapped": 2}
    assert datetime.fromisoformat(health["last_webhook_at"]) == now - timedelta(minutes=1)
    assert health["last_enrichment_error"]["reason"] == "sentry_401"
    assert datetime.fromisoformat(health["last_enrichment_error"]["at"]) == failed_at
    assert (await env.client.get(path, headers=await _org(env))).status_code == 404
