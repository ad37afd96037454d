"""A connection's health, from what Postgres already holds: the read model's timeline (webhooks
accepted: the incident events projected from this connection's webhooks), its audit (webhooks
ignored, by reason), its enrichments (the last failure) and the connection row (token expiry and
last refresh).

The body is made by :data:`PARTS`, each a function ``(pool, org, connection row, now) -> dict``
merged in order: another part (the reconciliation's ``last_sweep``) is one more entry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from blametrail_mappings_api.store.db import Pool, Row

__all__ = ["PARTS", "Part", "connection_health"]

Part = Callable[[Pool, str, Row, datetime], Awaitable[dict[str, Any]]]
DAY = timedelta(hours=24)


async def _webhooks(pool: Pool, org: str, row: Row, now: datetime) -> dict[str, Any]:
    conn_id, since = str(row["id"]), now - DAY
    async with pool.connection() as conn:
        accepted = await (
            await conn.execute(
                "SELECT count(*) FILTER (WHERE occurred_at >= %s) AS n, max(occurred_at) AS last"
                " FROM incident_timeline WHERE tenant_id = %s"
                " AND payload -> 'sentry' ->> 'connection_id' = %s"
                " AND event_type LIKE 'incident.%%'",
                (since, org, conn_id),
            )
        ).fetchone()
        ignored = await (
            await conn.execute(
                "SELECT reason, count(*) AS n FROM webhook_audit"
                " WHERE connection_id = %s AND tenant_id = %s AND received_at >= %s"
                " GROUP BY reason ORDER BY reason",
                (conn_id, org, since),
            )
        ).fetchall()
        last_ignored = await (
            await conn.execute(
                "SELECT max(received_at) AS last FROM webhook_audit"
                " WHERE connection_id = %s AND tenant_id = %s",
                (conn_id, org),
            )
        ).fetchone()
    seen = [t for t in ((accepted or {}).get("last"), (last_ignored or {}).get("last")) if t]
    return {
        "last_webhook_at": max(seen) if seen else None,
        "accepted_24h": int((accepted or {}).get("n") or 0),
        "ignored_24h": {r["reason"]: int(r["n"]) for r in ignored},
    }


async def _enrichment(pool: Pool, org: str, row: Row, now: datetime) -> dict[str, Any]:
    async with pool.connection() as conn:
        failed = await (
            await conn.execute(
                "SELECT e.fetched_at, e.reason FROM incident_enrichments e"
                " JOIN incidents i ON i.incident_id = e.incident_id"
                " WHERE i.tenant_id = %s AND i.sentry ->> 'connection_id' = %s"
                " AND e.status = 'failed' ORDER BY e.fetched_at DESC LIMIT 1",
                (org, str(row["id"])),
            )
        ).fetchone()
    error = {"at": failed["fetched_at"], "reason": failed["reason"]} if failed else None
    return {"last_enrichment_error": error}


async def _token(pool: Pool, org: str, row: Row, now: datetime) -> dict[str, Any]:
    return {
        "token_expires_at": row["token_expires_at"],
        "token_refreshed_at": row.get("token_refreshed_at"),
    }


async def _last_sweep(pool: Pool, org: str, row: Row, now: datetime) -> dict[str, Any]:
    """The reconciler's last successful sweep of this connection and what it repaired (a
    non-zero count means webhooks were lost; ``reconcile_sweeps``, services/reconciler)."""
    async with pool.connection() as conn:
        sweep = await (
            await conn.execute(
                "SELECT started_at, finished_at, checked, repairs FROM reconcile_sweeps"
                " WHERE connection_id = %s AND tenant_id = %s AND outcome = 'ok'"
                " ORDER BY started_at DESC LIMIT 1",
                (str(row["id"]), org),
            )
        ).fetchone()
    if sweep is None:
        return {"last_sweep": None}
    repairs = {str(k): int(v) for k, v in (sweep["repairs"] or {}).items()}
    return {
        "last_sweep": {
            "at": sweep["started_at"],
            "finished_at": sweep["finished_at"],
            "checked": sweep["checked"],
            "repairs": repairs,
            "repaired": sum(repairs.values()),
        }
    }


PARTS: list[Part] = [_webhooks, _enrichment, _token, _last_sweep]
"""The parts of the health body, merged in order; append one to add a key."""


async def connection_health(pool: Pool, org: str, row: Row, now: datetime) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for part in PARTS:
        body.update(await part(pool, org, row, now))
    return body
