"""Postgres side of a sweep: the read model it compares, the lock, and the sweeps it records."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg
from blametrail_common.events.observations import KnownIncident, MovedLink

from blametrail_reconciler.plan import Tracked

__all__ = ["LockLost", "Repair", "Store", "SweepRow"]


class LockLost(Exception):
    """The connection holding the sweep's advisory lock is gone (terminated, network): the lock
    went with it, another replica may be sweeping the connection now, so this sweep stops."""


# The incidents a sweep checks (``_TRACKED`` reads them a page at a time, by id).
_TRACKED_WHERE = """
WHERE i.tenant_id = %(tenant)s AND (i.sentry ->> 'connection_id') = %(conn)s
  AND i.source = 'sentry_issue' AND (i.sentry ->> 'issue_id') IS NOT NULL
  AND (i.status IN ('open', 'acknowledged', 'muted')
       OR (i.status = 'resolved' AND i.state_changed_at >= %(resolved_since)s))
  AND NOT EXISTS (SELECT 1 FROM reconcile_repairs r
                  WHERE r.incident_id = i.incident_id AND r.kind IN ('merged', 'deleted'))
"""
_TRACKED_SELECT = """
SELECT i.incident_id::text, i.sentry ->> 'issue_id', coalesce(i.service_id, ''), i.severity,
       i.title, i.status, i.sentry ->> 'project_slug', i.sentry ->> 'project_id',
       i.sentry ->> 'short_id', i.state_changed_at, reported.sentry_status
FROM incidents i
LEFT JOIN LATERAL (
    -- The status Sentry last reported: its status changes (webhooks and observations) and the
    -- write-backs it confirmed or echoed; never a BlameTrail action (incident.action), which
    -- Sentry may never have seen (write-back off, refused or failed).
    SELECT CASE t.event_type
             WHEN 'incident.opened' THEN 'unresolved'
             WHEN 'incident.reopened' THEN 'unresolved'
             WHEN 'incident.resolved' THEN 'resolved'
             WHEN 'incident.muted' THEN 'ignored'
             ELSE t.payload ->> 'sentry_status'
           END AS sentry_status
    FROM incident_timeline t
    WHERE t.incident_id = i.incident_id
      AND t.event_type IN ('incident.opened', 'incident.reopened', 'incident.resolved',
                           'incident.muted', 'incident.writeback.confirmed',
                           'incident.writeback.echoed')
    ORDER BY t.occurred_at DESC, t.log_partition DESC, t.log_offset DESC
    LIMIT 1
) reported ON true
"""
_TRACKED_PAGE = """
  AND i.incident_id > %(after)s::uuid
ORDER BY i.incident_id
LIMIT %(page)s
"""
# Constants of this module joined (S608: every value is a bound parameter).
_TRACKED = _TRACKED_SELECT + _TRACKED_WHERE + _TRACKED_PAGE
_TRACKED_COUNT = "SELECT count(*) FROM incidents i" + _TRACKED_WHERE  # noqa: S608
_BEFORE_ANY = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True, slots=True)
class Repair:
    kind: str
    sentry_issue_id: str
    incident_id: str | None
    detail: dict[str, Any]
    observed_at: datetime


@dataclass
class SweepRow:
    sweep_id: uuid.UUID
    connection_id: str
    tenant_id: str
    started_at: datetime
    finished_at: datetime | None = None
    outcome: str = "ok"
    checked: int = 0
    api_calls: int = 0
    created_since: datetime | None = None
    repairs: list[Repair] = field(default_factory=list)
    deleted: list[Repair] = field(default_factory=list)
    """Issues deleted in Sentry (kind ``deleted``): recorded in ``reconcile_repairs`` so they
    are not swept again, but no repair (no webhook was lost) and not in :meth:`counts`."""
    error: str | None = None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.repairs:
            out[r.kind] = out.get(r.kind, 0) + 1
        return out


@dataclass
class Store:
    conn: psycopg.AsyncConnection[Any]

    @classmethod
    @asynccontextmanager
    async def open(cls, dsn: str) -> AsyncIterator[Store]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            yield cls(conn)

    async def try_lock(self, connection_id: str) -> bool:
        """One replica at a time sweeps a connection: a session advisory lock on its id."""
        cur = await self.conn.execute(
            "SELECT pg_try_advisory_lock(hashtextextended('blametrail-reconcile:' || %s, 0))",
            (connection_id,),
        )
        row = await cur.fetchone()
        return bool(row and row[0])

    @property
    def usable(self) -> bool:
        return not (self.conn.closed or self.conn.broken)

    async def ensure_locked(self, connection_id: str) -> None:
        """:class:`LockLost` unless the lock's connection still answers. A session advisory
        lock lives as long as its backend; an idle connection dropped (pg_terminate_backend,
        a restart, the network) loses it without a word until it is next used."""
        try:
            await self.conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise LockLost(
                f"the advisory lock of connection {connection_id} was lost with its database"
                f" connection ({type(exc).__name__}); the sweep stops"
            ) from exc

    async def unlock(self, connection_id: str) -> None:
        await self.conn.execute(
            "SELECT pg_advisory_unlock(hashtextextended('blametrail-reconcile:' || %s, 0))",
            (connection_id,),
        )

    async def tracked_count(
        self, tenant_id: str, connection_id: str, resolved_since: datetime
    ) -> int:
        """How many incidents :meth:`tracked` would read now (the progress bar's total)."""
        params = {"tenant": tenant_id, "conn": connection_id, "resolved_since": resolved_since}
        row = await (await self.conn.execute(_TRACKED_COUNT, params)).fetchone()
        return int(row[0]) if row else 0

    async def tracked(
        self, tenant_id: str, connection_id: str, resolved_since: datetime, page: int
    ) -> AsyncIterator[list[Tracked]]:
        """The incidents a sweep checks, ``page`` at a time in id order: a sweep holds one page
        (not every open incident: 253,751 of them took the reconciler to 573 MB). Each page is
        its own statement, so an incident that changes meanwhile is read as it is when its page
        comes; one opened with an id before the page read is checked by the next sweep."""
        after = _BEFORE_ANY
        while True:
            found = await self._tracked_page(tenant_id, connection_id, resolved_since, after, page)
            if found:
                yield found
            if len(found) < page:
                return
            after = found[-1].incident.incident_id

    async def _tracked_page(
        self,
        tenant_id: str,
        connection_id: str,
        resolved_since: datetime,
        after: str,
        page: int,
    ) -> list[Tracked]:
        cur = await self.conn.execute(
            _TRACKED,
            {
                "tenant": tenant_id,
                "conn": connection_id,
                "resolved_since": resolved_since,
                "after": after,
                "page": page,
            },
        )
        out = []
        for row in await cur.fetchall():
            severity = row[3] if row[3] in ("sev1", "sev2", "sev3", "sev4", "sev5") else "sev2"
            known = KnownIncident(
                incident_id=row[0],
                service_id=row[2],
                severity=severity,
                title=row[4],
                status=row[5],
                project_slug=row[6],
                project_id=row[7],
                short_id=row[8],
            )
            out.append(
                Tracked(
                    issue_id=row[1], incident=known, state_changed_at=row[9], sentry_status=row[10]
                )
            )
        return out

    async def existing(self, incident_ids: list[str]) -> set[str]:
        if not incident_ids:
            return set()
        cur = await self.conn.execute(
            "SELECT incident_id::text FROM incidents WHERE incident_id = ANY(%s::uuid[])",
            (incident_ids,),
        )
        return {r[0] for r in await cur.fetchall()}

    async def published(self, observations: list[tuple[str | None, uuid.UUID]]) -> set[uuid.UUID]:
        """Of ``(incident id, observation id)``, the observations an earlier sweep
        published and recorded (a repair's ``detail.observation_id``)."""
        if not observations:
            return set()
        ids = [str(o) for _, o in observations]
        incidents = [i for i, _ in observations]
        cur = await self.conn.execute(
            "SELECT detail ->> 'observation_id' FROM reconcile_repairs"
            " WHERE incident_id = ANY(%s::uuid[])"
            " AND detail ->> 'observation_id' = ANY(%s)",
            (incidents, ids),
        )
        return {uuid.UUID(r[0]) for r in await cur.fetchall()}

    async def mapped_slugs(self, connection_id: str) -> set[str]:
        cur = await self.conn.execute(
            "SELECT sentry_project_slug FROM project_mappings"
            " WHERE connection_id::text = %s AND active",
            (connection_id,),
        )
        return {r[0] for r in await cur.fetchall()}

    async def sends_issue_webhooks(self, tenant_id: str, connection_id: str) -> bool:
        """Whether this connection's Sentry app is subscribed to issue webhooks, as far as we
        can know: Sentry's API does not tell an integration its own subscriptions, so the
        evidence is one issue webhook received from it (only issue webhooks carry ``shortId``:
        an incident whose Sentry ref has one, or an audited ``issue`` webhook)."""
        cur = await self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM incidents WHERE tenant_id = %(t)s"
            "   AND (sentry ->> 'connection_id') = %(c)s AND sentry ? 'short_id')"
            " OR EXISTS (SELECT 1 FROM webhook_audit WHERE connection_id = %(c)s"
            "   AND resource = 'issue')",
            {"t": tenant_id, "c": connection_id},
        )
        row = await cur.fetchone()
        return bool(row and row[0])

    async def last_success(self, connection_id: str) -> datetime | None:
        cur = await self.conn.execute(
            "SELECT max(started_at) FROM reconcile_sweeps WHERE connection_id = %s"
            " AND outcome = 'ok'",
            (connection_id,),
        )
        row = await cur.fetchone()
        return row[0] if row else None

    async def links(self, incident_id: str) -> list[MovedLink]:
        cur = await self.conn.execute(
            "SELECT external_issue_id, web_url FROM sentry_issue_links WHERE incident_id = %s::uuid",
            (incident_id,),
        )
        return [MovedLink(external_issue_id=r[0], web_url=r[1]) for r in await cur.fetchall()]

    async def record(self, sweep: SweepRow) -> None:
        async with self.conn.transaction():
            await self.conn.execute(
                "INSERT INTO reconcile_sweeps (sweep_id, connection_id, tenant_id, started_at,"
                " finished_at, outcome, checked, api_calls, created_since, repairs, error)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s)"
                " ON CONFLICT (sweep_id) DO NOTHING",
                (
                    sweep.sweep_id,
                    sweep.connection_id,
                    sweep.tenant_id,
                    sweep.started_at,
                    sweep.finished_at,
                    sweep.outcome,
                    sweep.checked,
                    sweep.api_calls,
                    sweep.created_since,
                    orjson.dumps(sweep.counts()).decode(),
                    sweep.error[:1000] if sweep.error else None,
                ),
            )
            if sweep.repairs or sweep.deleted:
                async with self.conn.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO reconcile_repairs (sweep_id, kind, sentry_issue_id,"
                        " incident_id, detail, observed_at) VALUES (%s, %s, %s, %s, %s::jsonb, %s)"
                        " ON CONFLICT DO NOTHING",
                        [
                            (
                                sweep.sweep_id,
                                r.kind,
                                r.sentry_issue_id,
                                r.incident_id,
                                orjson.dumps(r.detail).decode(),
                                r.observed_at,
                            )
                            for r in [*sweep.repairs, *sweep.deleted]
                        ],
                    )
