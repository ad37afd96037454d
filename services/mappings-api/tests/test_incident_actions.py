"""Incident actions over real Postgres: 409s, idempotency, tenant 404s, the actor recorded, and
the command written to the outbox with the action (issue 18 §1)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.events import decode
from blametrail_common.events.actions import IncidentActionRequestedV1
from blametrail_mappings_api.app import create_app
from blametrail_mappings_api.repository import Pool, Repository, create_pool
from blametrail_mappings_api.settings import ApiSettings

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    p = create_pool(database_url, 8)
    await p.open()
    yield p
    await p.close()


@pytest.fixture
async def client(pool: Pool) -> AsyncIterator[httpx.AsyncClient]:
    repo = Repository(pool, SecretBox(generate_key()))
    app = create_app(ApiSettings(public_ingest_url="https://hooks.example"), repo, {})
    app.state.test_repo = repo
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as c:
        yield c


async def _org(client: httpx.AsyncClient) -> tuple[dict[str, str], str]:
    repo: Repository = client._transport.app.state.test_repo  # type: ignore[attr-defined]
    slug = f"org-{uuid.uuid4().hex[:8]}"
    key = await repo.create_api_key(slug)
    async with repo.pool.connection() as conn:
        row = await (
            await conn.execute("SELECT id FROM organizations WHERE slug = %s", (slug,))
        ).fetchone()
    assert row is not None
    return {"Authorization": f"Bearer {key}"}, str(row["id"])


async def _member(client: httpx.AsyncClient, admin: dict[str, str]) -> tuple[dict[str, str], str]:
    email = f"{uuid.uuid4().hex[:10]}@example.test"
    made = await client.post(
        "/api/v1/users",
        headers=admin,
        json={"email": email, "name": "Mia Member", "password": PASSWORD, "role": "member"},
    )
    assert made.status_code == 201, made.text
    signed = await client.post("/api/v1/sessions", json={"email": email, "password": PASSWORD})
    assert signed.status_code == 201, signed.text
    return {"Authorization": f"Bearer {signed.json()['token']}"}, made.json()["id"]


async def _incident(pool: Pool, org: str, status: str = "open") -> str:
    ident = uuid.uuid4()
    at = datetime.now(UTC) - timedelta(minutes=5)
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO incidents (incident_id, tenant_id, service_id, source, status, severity,"
            " title, sentry, opened_at, state_changed_at, updated_at, state_order)"
            " VALUES (%s, %s, %s, 'sentry_issue', %s, 'sev2', 'KeyError: cart', %s, %s, %s, %s,"
            " '1-0')",
            (
                ident,
                org,
                str(uuid.uuid4()),
                status,
                orjson.dumps(
                    {"connection_id": "c1", "issue_id": "42", "org_slug": "acme"}
                ).decode(),
                at,
                at,
                at,
            ),
        )
    return str(ident)


async def _commands(pool: Pool, incident_id: str) -> list[IncidentActionRequestedV1]:
    async with pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT value FROM outbox WHERE topic = 'incident-commands' AND key = %s"
                " ORDER BY id",
                (incident_id.encode(),),
            )
        ).fetchall()
    out = []
    for row in rows:
        payload = decode(bytes(row["value"])).payload
        assert isinstance(payload, IncidentActionRequestedV1)
        out.append(payload)
    return out


async def test_a_member_resolves_and_the_action_names_them_and_goes_out_as_a_command(
    client: httpx.AsyncClient, pool: Pool
) -> None:
    admin, org = await _org(client)
    member, member_id = await _member(client, admin)
    inc = await _incident(pool, org)
    done = await client.post(f"/api/v1/incidents/{inc}/resolve", headers=member)
    assert done.status_code == 202, done.text
    body = done.json()
    assert (body["status"], body["action"], body["replayed"]) == ("resolved", "resolve", False)
    assert body["actor"] == {"kind": "user", "id": member_id, "name": "Mia Member"}
    (command,) = await _commands(pool, inc)
    assert (command.action, command.status_after, command.actor.id) == (
        "resolve",
        "resolved",
        member_id,
    )
    assert command.sentry.issue_id == "42"
    assert command.tenant_id == org


async def test_actions_the_state_does_not_allow_are_409s_naming_the_status(
    client: httpx.AsyncClient, pool: Pool
) -> None:
    admin, org = await _org(client)
    inc = await _incident(pool, org)
    reopen = await client.post(f"/api/v1/incidents/{inc}/reopen", headers=admin)
    assert reopen.status_code == 409, reopen.text
    assert reopen.json()["existing"] == {"status": "open"}
    assert reopen.json()["message"] == "the incident is already open"
    assert (
        await client.post(f"/api/v1/incidents/{inc}/acknowledge", headers=admin)
    ).status_code == 202
    acked = await client.post(f"/api/v1/incidents/{inc}/reopen", headers=admin)
    assert acked.json()["message"] == "an incident that is acknowledged cannot be reopened"
    # the projection has not folded the acknowledgement yet: the API knows it anyway
    again = await client.post(f"/api/v1/incidents/{inc}/acknowledge", headers=admin)
    assert (again.status_code, again.json()["existing"]) == (409, {"status": "acknowledged"})
    assert (await client.post(f"/api/v1/incidents/{inc}/resolve", headers=admin)).status_code == 202
    twice = await client.post(f"/api/v1/incidents/{inc}/resolve", headers=admin)
    assert (twice.status_code, twice.json()["message"]) == (409, "the incident is already resolved")
    ack = await client.post(f"/api/v1/incidents/{inc}/acknowledge", headers=admin)
    assert (ack.status_code, ack.json()["existing"]) == (409, {"status": "resolved"})
    assert (await client.post(f"/api/v1/incidents/{inc}/reopen", headers=admin)).status_code == 202
    assert [c.action for c in await _commands(pool, inc)] == ["acknowledge", "resolve", "reopen"]


async def test_the_same_idempotency_key_is_one_state_change_and_answers_the_first_answer(
    client: httpx.AsyncClient, pool: Pool
) -> None:
    admin, org = await _org(client)
    inc = await _incident(pool, org)
    key = {"Idempotency-Key": "retry-7", **admin}
    first = await client.post(f"/api/v1/incidents/{inc}/resolve", headers=key)
    second = await client.post(f"/api/v1/incidents/{inc}/resolve", headers=key)
    assert (first.status_code, second.status_code) == (202, 202)
    assert second.json() == {**first.json(), "replayed": True}
    assert len(await _commands(pool, inc)) == 1
    other = await client.post(f"/api/v1/incidents/{inc}/reopen", headers=key)
    assert other.status_code == 409
    assert "Idempotency-Key" in other.json()["message"]
    empty = await client.post(
        f"/api/v1/incidents/{inc}/reopen", headers={"Idempotency-Key": "x" * 201, **admin}
    )
    assert empty.status_code == 422
    assert len(await _commands(pool, inc)) == 1


async def test_an_idempotency_key_is_its_callers_own(client: httpx.AsyncClient, pool: Pool) -> None:
    """Issue 17 L2: another caller's same Idempotency-Key neither replays the first caller's
    answer (their action and name) nor blocks a different action; each caller's retry still
    replays its own."""
    admin, org = await _org(client)
    member, member_id = await _member(client, admin)
    inc = await _incident(pool, org)
    shared = "deploy-42"
    ack = await client.post(
        f"/api/v1/incidents/{inc}/acknowledge", headers={"Idempotency-Key": shared, **member}
    )
    assert ack.status_code == 202, ack.text
    resolve = await client.post(
        f"/api/v1/incidents/{inc}/resolve", headers={"Idempotency-Key": shared, **admin}
    )
    assert resolve.status_code == 202, resolve.text
    assert resolve.json()["replayed"] is False
    assert resolve.json()["actor"]["kind"] == "api_key"
    assert resolve.json()["status"] == "resolved"
    again = await client.post(
        f"/api/v1/incidents/{inc}/acknowledge", headers={"Idempotency-Key": shared, **member}
    )
    assert again.json() == {**ack.json(), "replayed": True}
    assert again.json()["actor"]["id"] == member_id
    mine = await client.post(
        f"/api/v1/incidents/{inc}/resolve", headers={"Idempotency-Key": shared, **admin}
    )
    assert mine.json() == {**resolve.json(), "replayed": True}
    assert [c.action for c in await _commands(pool, inc)] == ["acknowledge", "resolve"]


async def test_concurrent_identical_actions_make_one_state_change(
    client: httpx.AsyncClient, pool: Pool
) -> None:
    admin, org = await _org(client)
    inc = await _incident(pool, org)
    answers = await asyncio.gather(
        *(client.post(f"/api/v1/incidents/{inc}/resolve", headers=admin) for _ in range(8))
    )
    assert sorted(a.status_code for a in answers) == [202] + [409] * 7
    assert len(await _commands(pool, inc)) == 1


async def test_another_organizations_incident_is_a_404_and_nothing_is_recorded(
    client: httpx.AsyncClient, pool: Pool
) -> None:
    _, org = await _org(client)
    stranger, _ = await _org(client)
    inc = await _incident(pool, org)
    for action in ("acknowledge", "resolve", "reopen"):
        assert (
            await client.post(f"/api/v1/incidents/{inc}/{action}", headers=stranger)
        ).status_code == 404
    assign = await client.post(
        f"/api/v1/incidents/{inc}/assign", headers=stranger, json={"name": "them"}
    )
    assert assign.status_code == 404
    for bad in (str(uuid.uuid4()), "not-a-uuid"):
        assert (
            await client.post(f"/api/v1/incidents/{bad}/resolve", headers=stranger)
        ).status_code == 404
    assert await _commands(pool, inc) == []
    unsigned = await client.post(f"/api/v1/incidents/{inc}/resolve")
    assert unsigned.status_code == 401


async def test_assign_to_a_user_or_free_text_with_the_api_key_recorded(
    client: httpx.AsyncClient, pool: Pool
) -> None:
    admin, org = await _org(client)
    _, member_id = await _member(client, admin)
    inc = await _incident(pool, org)
    to_user = await client.post(
        f"/api/v1/incidents/{inc}/assign", headers=admin, json={"user_id": member_id}
    )
    assert to_user.status_code == 202, to_user.text
    assert to_user.json()["assignee"]["id"] == member_id
    assert to_user.json()["assignee"]["name"] == "Mia Member"
    assert to_user.json()["actor"]["kind"] == "api_key"
    assert to_user.json()["status"] == "open"  # an assignment keeps the status
    same = await client.post(
        f"/api/v1/incidents/{inc}/assign", headers=admin, json={"user_id": member_id}
    )
    assert same.status_code == 409
    text = await client.post(
        f"/api/v1/incidents/{inc}/assign", headers=admin, json={"name": "  payments on-call "}
    )
    assert text.status_code == 202
    assert text.json()["assignee"] == {
        "type": "text",
        "id": "payments on-call",
        "name": "payments on-call",
        "email": None,
    }
    bad: list[dict[str, Any]] = [
        {},
        {"user_id": member_id, "name": "both"},
        {"user_id": str(uuid.uuid4())},
        {"name": "x" * 201},
        {"name": "   "},
    ]
    for body in bad:
        refused = await client.post(f"/api/v1/incidents/{inc}/assign", headers=admin, json=body)
        assert refused.status_code == 422, (body, refused.text)
    commands = await _commands(pool, inc)
    assert [(c.action, c.assignee and c.assignee.type) for c in commands] == [
        ("assign", "user"),
        ("assign", "text"),
    ]


async def test_write_back_is_on_by_default_and_a_connection_can_turn_it_off(
    client: httpx.AsyncClient, pool: Pool
) -> None:
    from blametrail_common.events import ConnectionStateV1

    admin, _ = await _org(client)
    made = await client.post(
        "/api/v1/integrations/sentry/connections",
        headers=admin,
        json={
            "mode": "internal",
            "sentry_org_slug": f"acme-{uuid.uuid4().hex[:6]}",
            "client_secret": "s",
            "auth_token": "t",
        },
    )
    assert made.status_code == 201, made.text
    assert made.json()["writeback"] is True
    cid = made.json()["id"]
    off = await client.patch(
        f"/api/v1/integrations/sentry/connections/{cid}", headers=admin, json={"writeback": False}
    )
    assert (off.status_code, off.json()["writeback"]) == (200, False)
    null = await client.patch(
        f"/api/v1/integrations/sentry/connections/{cid}", headers=admin, json={"writeback": None}
    )
    assert null.status_code == 422
    async with pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT value FROM outbox WHERE topic = 'cp-connections' AND key = %s ORDER BY id",
                (cid.encode(),),
            )
        ).fetchall()
    states = [decode(bytes(r["value"])).payload for r in rows]
    assert all(isinstance(s, ConnectionStateV1) for s in states)
    assert [s.writeback for s in states] == [True, False]


async def _merge(pool: Pool, org: str, incident_id: str, into: str) -> None:
    """The projection's record of a merge: the merged-away incident closed (resolved) with
    ``incident.merged`` on its timeline naming the incident it went into."""
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE incidents SET status = 'resolved' WHERE incident_id = %s", (incident_id,)
        )
        await conn.execute(
            "INSERT INTO incident_timeline (event_id, incident_id, tenant_id, event_type,"
            " occurred_at, log_partition, log_offset, payload)"
            " VALUES (%s, %s, %s, 'incident.merged', now(), 0, 1, %s::jsonb)",
            (
                uuid.uuid4(),
                incident_id,
                org,
                orjson.dumps({"into_incident_id": into, "into_issue_id": "43"}).decode(),
            ),
        )


async def test_a_merged_incident_takes_no_action_and_names_where_it_went(
    client: httpx.AsyncClient, pool: Pool
) -> None:
    """Sentry merged its issue into another: reopening it (it shows resolved) would PUT the
    merged-away issue id; every action is a 409 naming the incident it was merged into, and
    nothing is recorded or sent. The incident it went into takes actions as before."""
    admin, org = await _org(client)
    merged, into = await _incident(pool, org), await _incident(pool, org)
    await _merge(pool, org, merged, into)
    for action, body in [
        ("reopen", None),
        ("resolve", None),
        ("acknowledge", None),
        ("assign", {"name": "Oncall Olga"}),
    ]:
        answer = await client.post(f"/api/v1/incidents/{merged}/{action}", headers=admin, json=body)
        assert answer.status_code == 409, (action, answer.text)
        assert answer.json()["message"] == f"the incident was merged into {into}"
        assert answer.json()["existing"] == {"status": "resolved", "merged_into": into}
    assert await _commands(pool, merged) == []
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM incident_actions WHERE incident_id = %s", (merged,)
        )
        assert (await cur.fetchone()) == {"n": 0}
    ok = await client.post(f"/api/v1/incidents/{into}/resolve", headers=admin)
    assert ok.status_code == 202, ok.text
