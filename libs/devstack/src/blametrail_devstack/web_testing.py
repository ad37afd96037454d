"""Development only: support for the web's tests: the real API (in process, on the session's Postgres) with
an injected clock, the web in front of it, and browsers-without-a-browser (httpx clients with
their own cookie jars)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import psycopg
from blametrail_mappings_api.repository import Repository

PASSWORD = "correct horse battery staple"  # noqa: S105 - the test users' password
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


async def post_form(
    browser: httpx.AsyncClient, page: str, action: str, data: dict[str, str]
) -> httpx.Response:
    """Open ``page``, then submit a form to ``action`` with the page's CSRF token."""
    opened = await browser.get(page)
    assert opened.status_code == 200, opened.text
    return await browser.post(action, data={**data, "csrf": csrf_of(opened.text)})


async def sign_in(
    browser: httpx.AsyncClient, email: str, password: str = PASSWORD
) -> httpx.Response:
    return await post_form(browser, "/signin", "/signin", {"email": email, "password": password})


@dataclass
class Org:
    slug: str
    key: str
    api: httpx.AsyncClient  # the REST API as this org's API key

    async def user(self, role: str = "admin") -> str:
        email = f"{uuid.uuid4().hex[:10]}@example.test"
        made = await self.api.post(
            "/api/v1/users",
            json={
                "email": email,
                "name": f"{role.title()} Person",
                "password": PASSWORD,
                "role": role,
            },
        )
        assert made.status_code == 201, made.text
        return email


async def new_org(repo: Repository, api_app: Any) -> Org:
    slug = f"org-{uuid.uuid4().hex[:8]}"
    key = await repo.create_api_key(slug)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api_app),
        base_url="http://api",
        headers={"Authorization": f"Bearer {key}"},
    )
    return Org(slug, key, client)


def seed_incident(
    dsn: str,
    tenant: str,
    *,
    title: str,
    service_id: str | None = None,
    record: dict[str, Any] | None = None,
    suspects: list[dict[str, Any]] | None = None,
    opened_at: datetime | None = None,
) -> str:
    """An incident as the projector would have written it (the web only reads it, via the API)."""
    ident = str(uuid.uuid4())
    at = opened_at or datetime.now(UTC)
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT id::text FROM organizations WHERE slug = %s", (tenant,)
        ).fetchone()
        tenant = row[0] if row else tenant  # the read model is keyed by the organization's id
        conn.execute(
            "INSERT INTO incidents (incident_id, tenant_id, service_id, source, status, severity,"
            " title, culprit, sentry, opened_at, state_changed_at, updated_at, state_order)"
            " VALUES (%s, %s, %s, 'sentry_issue', 'open', 'sev2', %s, %s, %s, %s, %s, %s, '1-')",
            (
                ident,
                tenant,
                service_id,
                title,
                title,
                orjson.dumps(
                    {
                        "short_id": title[:20],
                        "web_url": "https://sentry.example/i/1",
                        "project_slug": title[:20],
                    }
                ).decode(),
                at,
                at,
                at,
            ),
        )
        conn.execute(
            "INSERT INTO incident_timeline (event_id, incident_id, tenant_id, event_type,"
            " occurred_at, log_partition, log_offset, payload) VALUES (%s, %s, %s,"
            " 'incident.opened', %s, 0, 0, %s)",
            (uuid.uuid4(), ident, tenant, at, orjson.dumps({"reason": title}).decode()),
        )
        if record is not None:
            conn.execute(
                "INSERT INTO incident_enrichments (incident_id, tenant_id, event_id, status,"
                " record, fetched_at) VALUES (%s, %s, %s, 'enriched', %s, %s)",
                (ident, tenant, uuid.uuid4(), orjson.dumps(record).decode(), at),
            )
        if suspects is not None:
            conn.execute(
                "INSERT INTO incident_suspects (incident_id, tenant_id, event_id, computed_at,"
                " candidates, suspects) VALUES (%s, %s, %s, %s, %s, %s)",
                (ident, tenant, uuid.uuid4(), at, len(suspects), orjson.dumps(suspects).decode()),
            )
    return ident


@dataclass
class Env:
    repo: Repository
    api_app: Any
    web_app: Any
    clock: Clock
    dsn: str

    def browser(self, host: str = "203.0.113.7") -> httpx.AsyncClient:
        """A browser: its own cookies, its own address."""
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.web_app, client=(host, 5151)),
            base_url="http://web",
        )
