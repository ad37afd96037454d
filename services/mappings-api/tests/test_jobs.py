"""Reprocess jobs over real Postgres (issue 17 page 4): an admin queues one (202, the workers
woken by NOTIFY), a second for the same project while one is live is a 409 naming it, a member
gets 403, another organization's connection and job a 404. The worker's side is in
tests/e2e/test_reprocess_jobs.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_mappings_api.app import create_app
from blametrail_mappings_api.repository import Pool, Repository, create_pool
from blametrail_mappings_api.settings import ApiSettings
from blametrail_mappings_api.store.jobs import CHANNEL

PASSWORD = "correct horse battery staple"
REPROCESS = "/api/v1/audit/reprocess"


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    p = create_pool(database_url, 8)
    await p.open()
    yield p
    await p.close()


@pytest.fixture
async def repo(pool: Pool) -> Repository:
    return Repository(pool, SecretBox(generate_key()))


@pytest.fixture
async def client(repo: Repository) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ApiSettings(public_ingest_url="https://hooks.example"), repo, {})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as c:
        yield c


async def _org(repo: Repository) -> tuple[dict[str, str], str, str]:
    """An organization's admin key, its id and one connection of it."""
    slug = f"org-{uuid.uuid4().hex[:8]}"
    key = await repo.create_api_key(slug)
    async with repo.pool.connection() as conn:
        row = await (
            await conn.execute("SELECT id FROM organizations WHERE slug = %s", (slug,))
        ).fetchone()
    assert row is not None
    org = str(row["id"])
    made = await repo.connections.create(
        org,
        {
            "mode": "internal",
            "sentry_org_slug": f"acme-{slug}",
            "api_base_url": "https://sentry.io",
            "client_secret": "s" * 64,
            "auth_token": "t" * 64,
        },
    )
    return {"Authorization": f"Bearer {key}"}, org, str(made["id"])


async def test_an_admin_queues_a_job_and_reads_it_and_the_workers_are_woken(
    client: httpx.AsyncClient, repo: Repository, database_url: str
) -> None:
    admin, _, conn_id = await _org(repo)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as listener:
        await listener.execute(f"LISTEN {CHANNEL}")
        posted = await client.post(
            REPROCESS, headers=admin, json={"connection_id": conn_id, "project_slug": "pay"}
        )
        assert posted.status_code == 202, posted.text
        job_id = posted.json()["job_id"]
        woken = await asyncio.wait_for(anext(listener.notifies()), 10)
        assert (woken.channel, woken.payload) == (CHANNEL, job_id)

    got = await client.get(f"/api/v1/jobs/{job_id}", headers=admin)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["job_id"] == job_id
    assert (body["kind"], body["state"], body["total"], body["processed"]) == (
        "reprocess_ignored",
        "queued",
        None,
        0,
    )
    assert (body["republished"], body["error"], body["finished_at"]) == (0, None, None)
    assert body["params"] == {"connection_id": conn_id, "project_slug": "pay"}
    assert body["created_at"]


async def test_a_second_job_for_the_same_project_while_one_is_live_is_a_409_naming_it(
    client: httpx.AsyncClient, repo: Repository
) -> None:
    admin, _, conn_id = await _org(repo)
    body = {"connection_id": conn_id, "project_slug": "pay"}
    first = (await client.post(REPROCESS, headers=admin, json=body)).json()["job_id"]
    again = await client.post(REPROCESS, headers=admin, json=body)
    assert again.status_code == 409, again.text
    assert first in again.json()["message"]
    assert again.json()["existing"]["job_id"] == first
    assert again.json()["existing"]["state"] == "queued"
    shouted = {"connection_id": conn_id.upper(), "project_slug": "pay"}  # the same id, spelled so
    assert (await client.post(REPROCESS, headers=admin, json=shouted)).status_code == 409
    other = await client.post(
        REPROCESS, headers=admin, json={"connection_id": conn_id, "project_slug": "web"}
    )
    assert other.status_code == 202, other.text  # another project: its own job

    async with repo.pool.connection() as conn:  # the first finishes: a new one may start
        await conn.execute("UPDATE jobs SET state = 'done' WHERE job_id = %s", (first,))
    assert (await client.post(REPROCESS, headers=admin, json=body)).status_code == 202


async def test_a_member_is_refused_and_another_organization_gets_404s(
    client: httpx.AsyncClient, repo: Repository
) -> None:
    admin, _, conn_id = await _org(repo)
    other_admin, _, other_conn = await _org(repo)
    email = f"{uuid.uuid4().hex[:10]}@example.test"
    made = await client.post(
        "/api/v1/users",
        headers=admin,
        json={"email": email, "name": "Mia", "password": PASSWORD, "role": "member"},
    )
    assert made.status_code == 201, made.text
    signed = await client.post("/api/v1/sessions", json={"email": email, "password": PASSWORD})
    member = {"Authorization": f"Bearer {signed.json()['token']}"}
    body = {"connection_id": conn_id, "project_slug": "pay"}

    refused = await client.post(REPROCESS, headers=member, json=body)
    assert refused.status_code == 403, refused.text
    job_id = (await client.post(REPROCESS, headers=admin, json=body)).json()["job_id"]
    assert (await client.get(f"/api/v1/jobs/{job_id}", headers=member)).status_code == 200

    theirs = await client.post(REPROCESS, headers=other_admin, json=body)
    assert theirs.status_code == 404, theirs.text
    assert (await client.get(f"/api/v1/jobs/{job_id}", headers=other_admin)).status_code == 404
    mine = {"connection_id": other_conn, "project_slug": "pay"}
    assert (await client.post(REPROCESS, headers=admin, json=mine)).status_code == 404
    for bad in ("not-a-uuid", str(uuid.uuid4())):
        assert (await client.get(f"/api/v1/jobs/{bad}", headers=admin)).status_code == 404
        gone = {"connection_id": bad, "project_slug": "pay"}
        assert (await client.post(REPROCESS, headers=admin, json=gone)).status_code == 404
    assert (await client.get(f"/api/v1/jobs/{job_id}")).status_code == 401


@pytest.mark.parametrize(
    "body",
    [{}, {"connection_id": "x"}, {"connection_id": "x", "project_slug": ""}, {"a": 1}],
    ids=["empty", "no-project", "blank-project", "unknown-field"],
)
async def test_a_malformed_request_is_a_422_naming_the_field(
    client: httpx.AsyncClient, repo: Repository, body: dict[str, object]
) -> None:
    admin, _, _ = await _org(repo)
    got = await client.post(REPROCESS, headers=admin, json=body)
    assert got.status_code == 422, got.text
    assert got.json()["fields"]
