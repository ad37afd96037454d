"""``replay projection rebuild``: the read model rebuilt from offset zero, swapped in atomically.

1. Shadow tables ``rebuild_<table>`` are created like the live ones (columns, defaults,
   constraints, indexes).
2. A group-less reader applies the projected topics from their first offset into the shadow
   tables with the very code the live projection runs (:class:`Projection` with a table
   prefix), while the live projection keeps serving and writing. The reader never goes past
   the live group's stored offsets, so the two meet at the same log positions.
3. The swap, one transaction: lock the live tables (the live projector's next write waits; its
   readers wait for the commit), read the live group's offsets, apply the last records up to
   exactly those offsets, checksum live and shadow (same positions, so equal when the live tables
   are correct), rename live -> ``previous_<table>`` and shadow -> live, and give the indexes the
   live names. Postgres re-resolves table names of statements blocked on the lock, so the
   live projector continues into the new tables; its offsets are untouched.
4. ``previous_*`` tables are dropped unless asked to keep them.

A crash before the swap leaves the live tables as they were; the next rebuild drops the
leftover shadow tables and starts again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.structs import TopicPartition
from blametrail_common.kafka import open_reader
from blametrail_common.settings import KafkaSettings
from blametrail_projector.projection import PROJECTED_TOPICS, TABLES, Projection

__all__ = [
    "CHECKSUM_KEYS",
    "PREVIOUS",
    "SHADOW",
    "RebuildSummary",
    "checksums",
    "rebuild_projection",
]

SHADOW, PREVIOUS = "rebuild_", "previous_"
CHECKSUM_KEYS = {
    "incidents": "incident_id",
    "incident_timeline": "event_id",
    "incident_enrichments": "incident_id",
    "webhook_audit": "event_id",
    "incident_suspects": "incident_id",
}
Report = Callable[[int, int], None]  # (records applied so far, records to apply known so far)


@dataclass
class RebuildSummary:
    read: int = 0
    applied: int = 0
    refused: int = 0
    seconds: float = 0.0
    live: dict[str, str] = field(default_factory=dict)
    rebuilt: dict[str, str] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return self.live == self.rebuilt


async def checksums(conn: psycopg.AsyncConnection[Any], prefix: str = "") -> dict[str, str]:
    """``rows:md5`` per table, over each row's text in key order (bounded memory: a hash per row)."""
    out = {}
    for table, key in CHECKSUM_KEYS.items():
        cur = await conn.execute(
            f"SELECT count(*) || ':' || coalesce(md5(string_agg(md5(t::text), '' ORDER BY {key})), '')"  # noqa: S608
            f" FROM {prefix}{table} t"
        )
        row = await cur.fetchone()
        out[table] = str(row[0]) if row else ""
    return out


async def rebuild_projection(
    kafka: KafkaSettings,
    dsn: str,
    group: str,
    *,
    keep_previous: bool = False,
    report: Report | None = None,
    batch: int = 10000,
) -> RebuildSummary:
    assert set(CHECKSUM_KEYS) == set(TABLES)
    started = time.monotonic()
    summary = RebuildSummary()
    projection = Projection(None, table_prefix=SHADOW, bulk=True)
    async with open_reader(
        kafka,
        PROJECTED_TOPICS,
        name="rebuild",
        max_poll_records=batch,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    ) as log:
        reader, tps, begins = log.consumer, log.partitions, log.begins
        positions = dict(begins)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await _create_shadow(conn)
            await _secondary_indexes(conn, build=False)  # the bulk load is faster without them
            # A crash before the swap restarts the rebuild from zero, so its commits need not
            # wait for the WAL flush; the swap itself is a durable commit.
            await conn.execute("SET synchronous_commit = off")
            run = _Run(reader, projection, positions, summary, report, begins)
            # Bulk: follow the live projection until close behind it.
            while True:
                targets = await _targets(conn, reader, group, tps, begins)
                if sum(max(0, targets[tp] - positions[tp]) for tp in tps) <= batch:
                    break
                await run.until(conn, targets)
            await _secondary_indexes(conn, build=True)  # one sorted build each, not row by row
            # Swap.
            await conn.execute("SET synchronous_commit = on")
            conn_tx: Any = conn
            async with conn_tx.transaction():
                await conn.execute("LOCK TABLE " + ", ".join(TABLES) + " IN ACCESS EXCLUSIVE MODE")
                stored = await _stored(conn, group)
                targets = await _targets(conn, reader, group, tps, begins, stored)
                await run.until(conn, targets)
                summary.live = await checksums(conn)
                summary.rebuilt = await checksums(conn, SHADOW)
                await _swap(conn)
                if not stored:  # the live projection never ran: give it the rebuild's positions
                    await _store(conn, group, positions)
            if not keep_previous:
                for table in TABLES:
                    await conn.execute(f"DROP TABLE IF EXISTS {PREVIOUS}{table}")
    summary.refused = projection.refused
    summary.seconds = time.monotonic() - started
    return summary


@dataclass
class _Run:
    reader: AIOKafkaConsumer
    projection: Projection
    positions: dict[TopicPartition, int]
    summary: RebuildSummary
    report: Report | None
    begins: dict[TopicPartition, int]

    async def until(
        self, conn: psycopg.AsyncConnection[Any], targets: dict[TopicPartition, int]
    ) -> None:
        """Apply records until every partition reached its target. Records at or past a target
        are not applied; the reader is moved back to the target so they are read again later."""
        while todo := [tp for tp, t in targets.items() if self.positions[tp] < t]:
            self.reader.pause(*[tp for tp in targets if tp not in todo])
            self.reader.resume(*todo)
            polled = await self.reader.getmany(timeout_ms=500)
            records: list[ConsumerRecord[bytes, bytes]] = []
            for tp, recs in polled.items():
                keep = [r for r in recs if self.positions[tp] <= r.offset < targets[tp]]
                self.summary.read += len(recs)
                records.extend(keep)
                if keep:
                    self.positions[tp] = keep[-1].offset + 1
                if recs and recs[-1].offset >= targets[tp]:
                    self.reader.seek(tp, self.positions[tp])
            if records:
                tx: Any = conn
                async with tx.transaction():
                    await self.projection.apply(conn, records)
                self.summary.applied += len(records)
            if self.report is not None:
                done = sum(p - self.begins[tp] for tp, p in self.positions.items())
                total = sum(
                    max(t, self.positions[tp]) - self.begins[tp] for tp, t in targets.items()
                )
                self.report(done, total)


async def _stored(conn: psycopg.AsyncConnection[Any], group: str) -> dict[TopicPartition, int]:
    cur = await conn.execute(
        "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = %s", (group,)
    )
    return {TopicPartition(t, p): o for t, p, o in await cur.fetchall()}


async def _targets(
    conn: psycopg.AsyncConnection[Any],
    reader: AIOKafkaConsumer,
    group: str,
    tps: list[TopicPartition],
    begins: dict[TopicPartition, int],
    stored: dict[TopicPartition, int] | None = None,
) -> dict[TopicPartition, int]:
    """Where the rebuild must get to: the live group's stored offsets (a partition it has not
    reached yet: its first offset), or the end of the log when the live projection never ran."""
    if stored is None:
        stored = await _stored(conn, group)
    if not stored:
        return dict(await reader.end_offsets(tps))
    return {tp: stored.get(tp, begins[tp]) for tp in tps}


async def _create_shadow(conn: psycopg.AsyncConnection[Any]) -> None:
    for table in TABLES:
        await conn.execute(f"DROP TABLE IF EXISTS {SHADOW}{table}")
        await conn.execute(f"DROP TABLE IF EXISTS {PREVIOUS}{table}")
        await conn.execute(f"CREATE TABLE {SHADOW}{table} (LIKE {table} INCLUDING ALL)")


async def _secondary_indexes(conn: psycopg.AsyncConnection[Any], *, build: bool) -> None:
    """Drop the shadow tables' non-unique indexes, or build them as the live tables have them.

    The unique ones stay: the upserts need them. Names are Postgres's; the swap renames every
    shadow index to its live twin's name by shape."""
    for table in TABLES:
        source = table if build else f"{SHADOW}{table}"
        cur = await conn.execute(
            "SELECT i.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x"
            " JOIN pg_class i ON i.oid = x.indexrelid"
            " WHERE x.indrelid = %s::regclass AND NOT x.indisunique",
            (source,),
        )
        for name, definition in await cur.fetchall():
            if build:
                shape = str(definition).split(" USING ", 1)[1]
                await conn.execute("SET maintenance_work_mem = '256MB'")
                await conn.execute(f"CREATE INDEX ON {SHADOW}{table} USING {shape}".encode())
            else:
                await conn.execute(f"DROP INDEX {name}".encode())


async def _indexes(conn: psycopg.AsyncConnection[Any], table: str) -> dict[str, str]:
    """Index definition with its own name and table left out -> index name."""
    cur = await conn.execute(
        "SELECT i.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x"
        " JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = %s::regclass",
        (table,),
    )
    out = {}
    for name, definition in await cur.fetchall():
        shape = str(definition).replace(f"INDEX {name} ON", "INDEX ON", 1).split(" USING ", 1)[1]
        out[shape] = str(name)
    return out


async def _swap(conn: psycopg.AsyncConnection[Any]) -> None:
    for table in TABLES:
        live = await _indexes(conn, table)
        shadow = await _indexes(conn, f"{SHADOW}{table}")
        await conn.execute(f"ALTER TABLE {table} RENAME TO {PREVIOUS}{table}")
        await conn.execute(f"ALTER TABLE {SHADOW}{table} RENAME TO {table}")
        for shape, name in live.items():
            await conn.execute(f"ALTER INDEX {name} RENAME TO {(PREVIOUS + name)[:63]}")
            if shape in shadow:
                await conn.execute(f"ALTER INDEX {shadow[shape]} RENAME TO {name}")


async def _store(
    conn: psycopg.AsyncConnection[Any], group: str, positions: dict[TopicPartition, int]
) -> None:
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset, updated_at)"
            " VALUES (%s, %s, %s, %s, now()) ON CONFLICT (group_id, topic, partition)"
            " DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
            [(group, tp.topic, tp.partition, o) for tp, o in positions.items()],
        )
