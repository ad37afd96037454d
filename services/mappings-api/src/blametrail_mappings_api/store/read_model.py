"""Queries over the projection's tables (written by the projector, read here). Tenant-scoped;
newest first; cursors are ``(time, id)`` of the last row, so pages never skip or repeat."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from blametrail_mappings_api.errors import Invalid, NotFound
from blametrail_mappings_api.store.db import Pool, Row, decode_cursor, encode_cursor

__all__ = ["ReadModel"]

_INCIDENT_FILTERS = {
    "service": "service_id = %s",
    "status": "status = %s",
    "severity": "severity = %s",
    "source": "source = %s",
    "since": "opened_at >= %s",
}
_AUDIT_FILTERS = {
    "reason": "reason = %s",
    "project": "project_slug = %s",
    "since": "received_at >= %s",
}


def _filters(spec: dict[str, str], given: dict[str, str | None]) -> tuple[str, list[Any]]:
    sql, args = "", list[Any]()
    for name, value in given.items():
        if value is None:
            continue
        if name == "since":
            try:
                args.append(datetime.fromisoformat(value.replace("Z", "+00:00")))
            except ValueError:
                raise Invalid("since", "since must be an ISO 8601 time") from None
        else:
            args.append(value)
        sql += " AND " + spec[name]
    return sql, args


class ReadModel:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def incidents(
        self, org: str, filters: dict[str, str | None], cursor: str | None, limit: int
    ) -> tuple[list[Row], str | None]:
        where, args = _filters(_INCIDENT_FILTERS, filters)
        return await self._page(
            "incidents", "opened_at", "incident_id::text", org, where, args, cursor, limit
        )

    async def audit(
        self, org: str, filters: dict[str, str | None], cursor: str | None, limit: int
    ) -> tuple[list[Row], str | None]:
        where, args = _filters(_AUDIT_FILTERS, filters)
        return await self._page(
            "webhook_audit", "received_at", "event_id::text", org, where, args, cursor, limit
        )

    async def incident(self, org: str, incident_id: str) -> dict[str, Any]:
        try:
            ident = uuid.UUID(incident_id)
        except ValueError:
            raise NotFound("incident") from None
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT * FROM incidents WHERE tenant_id = %s AND incident_id = %s",
                    (org, ident),
                )
            ).fetchone()
            if row is None:
                raise NotFound("incident")
            timeline = await (
                await conn.execute(
                    "SELECT event_id, event_type, occurred_at, payload FROM incident_timeline WHERE incident_id = %s"
                    " ORDER BY occurred_at, log_partition, log_offset",
                    (ident,),
                )
            ).fetchall()
            enrichment = await (
                await conn.execute(
                    "SELECT status, reason, record, fetched_at FROM incident_enrichments WHERE incident_id = %s",
                    (ident,),
                )
            ).fetchone()
            suspects = await (
                await conn.execute(
                    "SELECT computed_at, candidates, suspects FROM incident_suspects WHERE incident_id = %s",
                    (ident,),
                )
            ).fetchone()
            links = await (
                await conn.execute(
                    "SELECT connection_id, sentry_issue_id, web_url, external_issue_id, linked_at"
                    " FROM sentry_issue_links WHERE incident_id = %s ORDER BY linked_at",
                    (ident,),
                )
            ).fetchall()
        return {
            **row,
            "timeline": timeline,
            "enrichment": enrichment,
            "suspects": suspects,
            "links": links,
        }

    async def _page(
        self,
        table: str,
        ts: str,
        ident: str,
        org: str,
        where: str,
        args: list[Any],
        cursor: str | None,
        limit: int,
    ) -> tuple[list[Row], str | None]:
        sql = f"SELECT * FROM {table} WHERE tenant_id = %s{where}"  # noqa: S608 - names are ours
        params: list[Any] = [org, *args]
        after = decode_cursor(cursor)
        if after:
            sql += f" AND ({ts}, {ident}) < (%s, %s)"
            params += list(after)
        sql += f" ORDER BY {ts} DESC, {ident} DESC LIMIT %s"
        params.append(limit + 1)
        async with self.pool.connection() as conn:
            rows: list[Row] = await (await conn.execute(sql.encode(), params)).fetchall()
        more, rows = len(rows) > limit, rows[:limit]
        key = "incident_id" if table == "incidents" else "event_id"
        return rows, encode_cursor(rows[-1][ts], rows[-1][key]) if more and rows else None
