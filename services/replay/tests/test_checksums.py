"""The swap's checksum on real Postgres: the same rows in any order give the same sums; one
changed value anywhere (a jsonb member, a timestamp), or a row more, gives another."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from blametrail_common.db import migrate
from blametrail_devstack.pytest_plugin import Infra, create_database
from blametrail_projector.projection import TABLES
from blametrail_replay import bulk
from blametrail_replay.rebuild import checksums

ROWS = [
    (uuid.uuid5(uuid.NAMESPACE_OID, f"e{i}"), f"{i}", f'{{"title": "tab\\there", "n": {i}}}')
    for i in range(50)
]
INSERT = (
    "INSERT INTO {p}incident_timeline (event_id, incident_id, tenant_id, event_type,"
    " occurred_at, log_partition, log_offset, payload)"
    " VALUES (%s, %s::uuid, 't', 'incident.opened', '2026-03-14T09:00:00Z', 0, %s, %s)"
)


async def _load(
    conn: psycopg.AsyncConnection[Any], prefix: str, rows: list[tuple[uuid.UUID, str, str]]
) -> None:
    async with conn.cursor() as cur:
        await cur.executemany(
            INSERT.format(p=prefix),
            [(e, uuid.uuid5(uuid.NAMESPACE_OID, i), int(i), p) for e, i, p in rows],
        )


async def test_equal_rows_in_any_order_give_equal_checksums_and_a_change_does_not(
    infra: Infra,
) -> None:
    dsn = create_database(infra.server_dsn, f"bt_cks_{uuid.uuid4().hex[:6]}")
    migrate(dsn)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for prefix in ("a_", "b_"):
            await bulk.create_bare(conn, TABLES, prefix)
        await _load(conn, "a_", ROWS)
        await _load(conn, "b_", ROWS[::-1])
        same = await checksums(conn, "a_")
        assert same == await checksums(conn, "b_")
        assert same["incident_timeline"].startswith("50:")

        await conn.execute(
            "UPDATE b_incident_timeline SET payload = jsonb_set(payload, '{n}', '7')"
            " WHERE log_offset = 3"
        )
        changed = await checksums(conn, "b_")
        assert changed["incident_timeline"] != same["incident_timeline"]
        assert changed["incidents"] == same["incidents"]

        await conn.execute(
            "UPDATE b_incident_timeline SET payload = jsonb_set(payload, '{n}', '3'),"
            " occurred_at = occurred_at + interval '1 microsecond' WHERE log_offset = 3"
        )
        assert (await checksums(conn, "b_"))["incident_timeline"] != same["incident_timeline"]

        await conn.execute("UPDATE b_incident_timeline SET occurred_at = '2026-03-14T09:00:00Z'")
        assert await checksums(conn, "b_") == same  # back to the very same rows
        await _load(conn, "b_", ROWS[:1])  # the same row twice (no key on a bare table)
        assert (await checksums(conn, "b_"))["incident_timeline"].startswith("51:")
