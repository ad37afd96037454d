"""The worker's state in Postgres (``sync_incidents``, migrations 0030, 0039): one row per incident it
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
    " winner_origin, winner_at, winner_action_id, written_order, written_status, written_at,"
    " contested_order FROM sync_incidents WHERE incident_id = ANY(%s::uuid[])"
)
_COLUMNS = (
    "incident_id",
    "tenant_id",
    "connection_id",
    "issue_id",
    "winner_order",
    "winner_status",
    "winner_origin",
    "winner_at",
    "winner_action_id",
    "written_order",
    "written_status",
    "written_at",
    "contested_order",
)
_TYPES = ("uuid", *["text"] * 6, "timestamptz", "text", "text", "text", "timestamptz", "text")
# One statement a batch, its rows as one array a column: a statement a row (``executemany``)
# cost Postgres 15,000 statements for a storm of 15,000 new issues. At most one row an incident
# (``save``): ON CONFLICT cannot update a row twice in one statement.
_UPSERT = (  # S608: identifiers and casts from the constants above; the values are parameters
    f"INSERT INTO sync_incidents ({', '.join(_COLUMNS)}, updated_at)"  # noqa: S608
    f" SELECT *, now() FROM unnest({', '.join(f'%s::{t}[]' for t in _TYPES)})"
    " ON CONFLICT (incident_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS[1:])
    + ", updated_at = now()"
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
            contested_by=row[12],
        )
        out[row[0]] = Tracked(row[0], row[1], row[2], row[3], winner)
    return out


async def save(conn: psycopg.AsyncConnection, rows: Iterable[Tracked]) -> None:
    """Upsert ``rows`` (the last one of an incident wins) with one statement."""
    last = {t.incident_id: t for t in rows}
    if not last:
        return
    columns: list[list[object]] = [[] for _ in _COLUMNS]
    for t in last.values():
        w = t.winner
        row = (t.incident_id, t.tenant_id, t.connection_id, t.issue_id, w.order, w.status)
        more = (w.origin, w.at, w.action_id, w.written_order, w.written_status, w.written_at)
        for column, value in zip(columns, (*row, *more, w.contested_by), strict=True):
            column.append(value)
    await conn.execute(_UPSERT, columns)
