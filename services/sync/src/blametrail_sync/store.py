"""The worker's state in Postgres (``sync_incidents``, migration 0030): one row per incident it
may write back, the winner by ``incident_order`` and the last write-back made. Written in the
same transaction as the consumer's offsets (:func:`blametrail_common.kafka.pgsink.run_into_postgres`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import psycopg

from blametrail_sync.decide import Tracked
from blametrail_sync.plan import Winner

__all__ = ["load", "save"]


_SELECT = (
    "SELECT incident_id::text, tenant_id, connection_id, issue_id, winner_order, winner_status,"
    " winner_origin, winner_at, winner_action_id, written_order, written_status, written_at"
    " FROM sync_incidents WHERE incident_id = ANY(%s::uuid[])"
)
_UPSERT = (
    "INSERT INTO sync_incidents (incident_id, tenant_id, connection_id, issue_id, winner_order,"
    " winner_status, winner_origin, winner_at, winner_action_id, written_order, written_status,"
    " written_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())"
    " ON CONFLICT (incident_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id,"
    " connection_id = EXCLUDED.connection_id, issue_id = EXCLUDED.issue_id,"
    " winner_order = EXCLUDED.winner_order, winner_status = EXCLUDED.winner_status,"
    " winner_origin = EXCLUDED.winner_origin, winner_at = EXCLUDED.winner_at,"
    " winner_action_id = EXCLUDED.winner_action_id, written_order = EXCLUDED.written_order,"
    " written_status = EXCLUDED.written_status, written_at = EXCLUDED.written_at,"
    " updated_at = now()"
)


async def load(conn: psycopg.AsyncConnection, incident_ids: Sequence[str]) -> dict[str, Tracked]:
    """The tracked incidents among ``incident_ids``."""
    cur = await conn.execute(_SELECT, (list(incident_ids),))
    out: dict[str, Tracked] = {}
    for row in await cur.fetchall():
        winner = Winner(
            order=row[4],
            status=row[5],
            origin=row[6],
            at=row[7],
            action_id=row[8],
            written_order=row[9],
            written_status=row[10],
            written_at=row[11],
        )
        out[row[0]] = Tracked(row[0], row[1], row[2], row[3], winner)
    return out


async def save(conn: psycopg.AsyncConnection, rows: Iterable[Tracked]) -> None:
    params = [
        (
            t.incident_id,
            t.tenant_id,
            t.connection_id,
            t.issue_id,
            t.winner.order,
            t.winner.status,
            t.winner.origin,
            t.winner.at,
            t.winner.action_id,
            t.winner.written_order,
            t.winner.written_status,
            t.winner.written_at,
        )
        for t in rows
    ]
    if params:
        async with conn.cursor() as cur:
            await cur.executemany(_UPSERT, params)
