"""The worker's state in real Postgres: what ``save`` writes, ``load`` reads back."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg
from blametrail_sync import store
from blametrail_sync.decide import Tracked
from blametrail_sync.plan import Winner

AT = datetime(2026, 12, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _tracked(n: int) -> Tracked:
    winner = Winner(order=f"{n:04d}", status="unresolved", origin="sentry", at=AT)
    return Tracked(str(uuid.uuid4()), "t1", "c1", str(7000 + n), winner)


async def test_a_saved_batch_reads_back_and_the_last_row_of_an_incident_wins(
    database_url: str,
) -> None:
    rows = [_tracked(n) for n in range(3)]
    written = replace(
        rows[1].winner,
        origin="blametrail",
        action_id="a-1",
        written_order="0009",
        written_status="resolved",
        written_at=AT + timedelta(seconds=1),
        contested_by="0005",
    )
    later = replace(rows[1], winner=written)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await store.save(conn, [])  # nothing to write
        await store.save(conn, [*rows, later])  # an incident twice: the last one is kept
        ids = [t.incident_id for t in rows]
        assert await store.load(conn, ids) == {
            rows[0].incident_id: rows[0],
            rows[1].incident_id: later,
            rows[2].incident_id: rows[2],
        }
        again = replace(rows[2], winner=replace(rows[2].winner, order="0010", status="resolved"))
        await store.save(conn, [again])  # a stored row is updated
        assert (await store.load(conn, ids))[again.incident_id] == again
        assert await store.load(conn, [str(uuid.uuid4())]) == {}
