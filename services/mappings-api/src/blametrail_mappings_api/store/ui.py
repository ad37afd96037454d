"""Postgres access for the Sentry UI components (:mod:`~blametrail_mappings_api.sentry.ui_components`).

Every query is scoped to the organization the verified installation belongs to; incidents are read
from the projection's ``incidents`` table and created only through the outbox
(``incident-events``), never written here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from blametrail_common.events import new_event
from blametrail_common.events.incidents import (
    IncidentOpenedV1,
    IssueSnapshot,
    SentryRef,
    Severity,
    incident_id_for,
)

from blametrail_mappings_api.store.db import Conn, Pool, Row
from blametrail_mappings_api.store.outbox import enqueue

__all__ = ["IssueRef", "Linked", "UiRepository"]

_OPTIONS_LIMIT = 100


@dataclass(frozen=True)
class IssueRef:
    """The Sentry issue a UI request is about (from the request body, not from Sentry's API)."""

    issue_id: str
    web_url: str | None
    project_slug: str | None
    project_id: str | None


@dataclass(frozen=True)
class Linked:
    """What Sentry stores for a link: our incident and the service it is on."""

    incident_id: str
    service_slug: str
    created: bool  # an incident.opened event was enqueued by this call


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _like(query: str | None) -> str:
    escaped = (query or "").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class UiRepository:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    # -- connections ---------------------------------------------------------------------------
    async def connection_for_installation(self, installation_id: str) -> Row | None:
        """The enabled connection bound to ``installation_id`` (OAuth installs bind one)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM sentry_connections WHERE installation_uuid = %s AND enabled",
                (installation_id,),
            )
            row: Row | None = await cur.fetchone()
        return row

    async def unbound_internal_connections(self) -> list[Row]:
        """Enabled internal connections that know no installation id yet (the only ones a UI
        call naming an unknown installation can be meant for)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM sentry_connections WHERE mode = 'internal' AND enabled"
                " AND installation_uuid IS NULL ORDER BY id"
            )
            rows: list[Row] = await cur.fetchall()
        return rows

    # -- options ---------------------------------------------------------------------------------
    async def services(self, org: str, query: str | None) -> list[Row]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id, slug, name FROM services WHERE org_id = %s"
                " AND (name ILIKE %s OR slug ILIKE %s) ORDER BY lower(name), id LIMIT %s",
                (org, _like(query), _like(query), _OPTIONS_LIMIT),
            )
            rows: list[Row] = await cur.fetchall()
        return rows

    async def service(self, org: str, service_id: str) -> Row | None:
        ident = _uuid(service_id)
        if ident is None:
            return None
        async with self.pool.connection() as conn:
            return await self._service(conn, org, ident)

    async def open_incidents(self, org: str, query: str | None) -> list[Row]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT i.incident_id, i.title, i.severity, s.slug AS service_slug"
                " FROM incidents i LEFT JOIN services s ON s.id::text = i.service_id"
                " WHERE i.tenant_id = %s AND i.status = 'open' AND i.title ILIKE %s"
                " ORDER BY i.opened_at DESC, i.incident_id DESC LIMIT %s",
                (org, _like(query), _OPTIONS_LIMIT),
            )
            rows: list[Row] = await cur.fetchall()
        return rows

    # -- links -----------------------------------------------------------------------------------
    async def create_incident(
        self,
        connection: Row,
        service: Row,
        issue: IssueRef,
        title: str,
        severity: Severity,
    ) -> Linked:
        """Open the incident of ``issue`` on ``service`` (event through the outbox) and link it.

        Idempotent: the incident id is the pipeline's deterministic one, so an issue whose
        incident the pipeline (or an earlier call) already opened is linked, not opened again.
        """
        org = str(connection["org_id"])
        incident_id = incident_id_for(org, "issue", issue.issue_id)
        async with self.pool.connection() as conn, conn.transaction():
            existing = await self._incident(conn, org, uuid.UUID(incident_id))
            inserted = await self._link(conn, incident_id, connection, issue)
            if existing is not None or not inserted:
                slug = existing["service_slug"] if existing else service["slug"]
                return Linked(incident_id, slug or "incident", created=False)
            now = datetime.now(UTC)
            opened = IncidentOpenedV1(
                incident_id=incident_id,
                tenant_id=org,
                service_id=str(service["id"]),
                source="sentry_issue",
                severity=severity,
                status_at=now,
                sentry=SentryRef(
                    connection_id=str(connection["id"]),
                    org_slug=connection["sentry_org_slug"],
                    project_id=issue.project_id,
                    project_slug=issue.project_slug,
                    issue_id=issue.issue_id,
                    web_url=issue.web_url,
                ),
                snapshot=IssueSnapshot(title=title),
            )
            event = new_event(
                opened,
                key=incident_id,
                tenant=org,
                occurred_at=now,
                event_id=uuid.uuid5(uuid.UUID(incident_id), f"sentry-ui:create:{connection['id']}"),
            )
            await enqueue(conn, "incident-events", event)
        return Linked(incident_id, service["slug"], created=True)

    async def link_incident(
        self, connection: Row, incident_id: str, issue: IssueRef
    ) -> Linked | None:
        """Link ``issue`` to an incident of the connection's organization; ``None`` if it has none
        with that id (another organization's incident is the same as no incident)."""
        org, ident = str(connection["org_id"]), _uuid(incident_id)
        if ident is None:
            return None
        async with self.pool.connection() as conn, conn.transaction():
            found = await self._incident(conn, org, ident)
            if found is None:
                return None
            await self._link(conn, str(ident), connection, issue)
        return Linked(str(ident), found["service_slug"] or "incident", created=False)

    async def _link(self, conn: Conn, incident_id: str, connection: Row, issue: IssueRef) -> bool:
        cur = await conn.execute(
            "INSERT INTO sentry_issue_links (incident_id, connection_id, sentry_issue_id, web_url,"
            " linked_at) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING incident_id",
            (incident_id, str(connection["id"]), issue.issue_id, issue.web_url, datetime.now(UTC)),
        )
        return await cur.fetchone() is not None

    async def _incident(self, conn: Conn, org: str, ident: uuid.UUID) -> Row | None:
        cur = await conn.execute(
            "SELECT i.incident_id, s.slug AS service_slug FROM incidents i"
            " LEFT JOIN services s ON s.id::text = i.service_id"
            " WHERE i.tenant_id = %s AND i.incident_id = %s",
            (org, ident),
        )
        row: Row | None = await cur.fetchone()
        return row

    async def _service(self, conn: Conn, org: str, ident: uuid.UUID) -> Row | None:
        cur = await conn.execute(
            "SELECT id, slug, name FROM services WHERE org_id = %s AND id = %s", (org, ident)
        )
        row: Row | None = await cur.fetchone()
        return row
