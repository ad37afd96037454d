"""``replay projection rebuild``: the read model rebuilt from offset zero, swapped in atomically.

1. Shadow tables ``rebuild_<table>`` are created like the live ones (columns, defaults,
   constraints), without indexes.
2. Bulk: a group-less reader reads the projected topics from their first offset up to the live
   group's stored offsets (the end of the log if it never ran) and folds them by key in memory
   (:mod:`blametrail_replay.fold`, over the live projection's own row mapping; in
   ``BLAMETRAIL_REPLAY_FOLD_WORKERS`` processes, a share of the record keys each,
   :mod:`blametrail_replay.pool`): the append-only tables are streamed with ``COPY`` as they are
   read, the folded tables are copied once at the end (:mod:`blametrail_replay.bulk`). Then the
   keys and indexes are built once each.
   Memory grows with distinct keys; past ``BLAMETRAIL_REPLAY_FOLD_MAX_INCIDENTS`` the fold stops
   there, is loaded, and the rest of the log goes the live way (below). A folded row Postgres
   refuses (the live projection would have dead-lettered its record) makes the rebuild start
   again the live way from offset zero, so such a record leaves exactly the same trace.
3. Follow: the records after that (the live projection kept writing) are applied with the very
   code the live projection runs (:class:`Projection` with a table prefix) until close behind it.
4. The swap, one transaction: lock the live tables (the live projector's next write waits; its
   readers wait for the commit), read the live group's offsets, apply the last records up to
   exactly those offsets, checksum live and shadow (same positions, so equal when the live tables
   are correct), rename live -> ``previous_<table>`` and shadow -> live, and give the indexes the
   live names. Postgres re-resolves table names of statements blocked on the lock, so the
   live projector continues into the new tables; its offsets are untouched.
5. ``previous_*`` tables are dropped unless asked to keep them.

A crash before the swap leaves the live tables as they were; the next rebuild drops the
leftover shadow tables and starts again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
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

from blametrail_replay import bulk
from blametrail_replay.fold import Batch, Fold, Unfoldable
from blametrail_replay.pool import FOLDED, FoldPool
from blametrail_replay.settings import ReplaySettings

__all__ = [
    "CHECKSUM_KEYS",
    "PREVIOUS",
    "SHADOW",
    "RebuildSummary",
    "checksums",
    "rebuild_projection",
]

log = logging.getLogger(__name__)
SHADOW, PREVIOUS = "rebuild_", "previous_"
CHECKSUM_KEYS = {
    "incidents": "incident_id",
    "incident_timeline": "event_id",
    "incident_enrichments": "incident_id",
    "webhook_audit": "event_id",
    "incident_suspects": "incident_id",
}
Report = Callable[[int, int], None]  # (records applied so far, records to apply known so far)
# Postgres refusing a value of a row (the live projection dead-letters such a record)
# (or a value the fold cannot hold, or a key folded in two workers: the same way).
# A fold worker that dies (``pool.WorkerFailed``: killed, out of memory) is not a refused row:
# the rebuild raises it, the live tables untouched (fewer workers or a lower fold bound help).
_REFUSED = (psycopg.DataError, psycopg.IntegrityError, Unfoldable)


@dataclass
class RebuildSummary:
    read: int = 0
    applied: int = 0
    refused: int = 0
    seconds: float = 0.0
    live: dict[str, str] = field(default_factory=dict)
    rebuilt: dict[str, str] = field(default_factory=dict)
    folded: int = 0  # records folded and bulk-loaded (the rest went the live projection's way)
    keys: int = 0  # distinct keys the fold held at most
    duplicates: int = 0  # rows of an event delivered again, dropped as the live projection does
    fallback: str = ""  # why the bulk path stopped short, if it did
    phases: dict[str, float] = field(default_factory=dict)  # phase -> seconds, in order
    worker_rss_mb: list[float] = field(default_factory=list)  # the fold workers' peak RSS

    def timed(self, phase: str, since: float) -> float:
        """Record ``phase`` as ended now (``since``: its start, ``time.monotonic()``); returns now."""
        now = time.monotonic()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - since
        return now

    @property
    def identical(self) -> bool:
        return self.live == self.rebuilt


async def checksums(conn: psycopg.AsyncConnection[Any], prefix: str = "") -> dict[str, str]:
    """``rows:md5`` per table: the md5 of two sums of 64-bit hashes of each row's values (two
    seeds), so independent of row order, one sequential scan, no sort and no text output of
    the rows (``hash_record_extended`` hashes each column by its type's own hash: equal values,
    equal hash; that of ``md5(string_agg(t::text ORDER BY key))`` cost 5x as much)."""
    out = {}
    for table in CHECKSUM_KEYS:
        cur = await conn.execute(
            "SELECT count(*) || ':' || md5(coalesce(sum(hash_record_extended(t, 0)), 0) || ':'"  # noqa: S608
            f" || coalesce(sum(hash_record_extended(t, 1)), 0)) FROM {prefix}{table} t"
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
    batch: int = 5000,
    fold_max_incidents: int | None = None,
    fold_workers: int | None = None,
) -> RebuildSummary:
    """Rebuild the projection's tables from the log and swap them in (module docstring).

    ``fold_max_incidents`` bounds the fold (default: ``BLAMETRAIL_REPLAY_FOLD_MAX_INCIDENTS``),
    ``fold_workers`` the processes it runs in (``BLAMETRAIL_REPLAY_FOLD_WORKERS``; 0: none).
    ``batch``: records a poll reads, sent to the workers (two in flight each): 5,000 peaked at
    567 MB in all for 1M events (bench/replay), 10,000 at 693 MB, for about a tenth more time.
    Raises what the broker or Postgres raise when they fail; the live tables are then untouched."""
    assert set(CHECKSUM_KEYS) == set(TABLES)
    settings = ReplaySettings()
    if fold_max_incidents is None:
        fold_max_incidents = settings.fold_max_incidents
    if fold_workers is None:
        fold_workers = settings.fold_workers
    started = time.monotonic()
    summary = RebuildSummary()
    projection = Projection(None, table_prefix=SHADOW)
    async with open_reader(
        kafka,
        PROJECTED_TOPICS,
        name="rebuild",
        max_poll_records=batch,
        # what the reader holds fetched ahead, parsed into records (8 MB a partition and 64 in
        # all: the rebuild's process peaked at 219 MB in the 1M-event bench, 166 with these)
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=2 * 1024 * 1024,
    ) as log_reader:
        reader, tps, begins = log_reader.consumer, log_reader.partitions, log_reader.begins
        positions = dict(begins)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            # A crash before the swap restarts the rebuild from zero, so its commits need not
            # wait for the WAL flush; the swap itself is a durable commit.
            await conn.execute("SET synchronous_commit = off")
            run = _Run(reader, projection, positions, summary, report, begins)
            targets = await _targets(conn, reader, group, tps, begins)
            try:
                await _bulk(conn, dsn, run, targets, fold_max_incidents, fold_workers)
            except _REFUSED as exc:
                summary.fallback = f"Postgres refused a folded row ({type(exc).__name__}: {exc})"
                log.warning("bulk load refused, rebuilding the live way", extra={"error": str(exc)})
                await _restart_live(conn, run)
            # Follow the live projection until close behind it.
            while True:
                targets = await _targets(conn, reader, group, tps, begins)
                if sum(max(0, targets[tp] - positions[tp]) for tp in tps) <= batch:
                    break
                await run.until(conn, targets)
            at = time.monotonic()
            await bulk.build_secondary_parallel(dsn, TABLES, SHADOW)  # one sorted build each
            at = summary.timed("secondary indexes", at)
            # Swap.
            await conn.execute("SET synchronous_commit = on")
            conn_tx: Any = conn
            async with conn_tx.transaction():
                await conn.execute("LOCK TABLE " + ", ".join(TABLES) + " IN ACCESS EXCLUSIVE MODE")
                stored = await _stored(conn, group)
                targets = await _targets(conn, reader, group, tps, begins, stored)
                await run.until(conn, targets)
                at = summary.timed("swap: lock, last records", at)
                summary.live = await checksums(conn)
                summary.rebuilt = await checksums(conn, SHADOW)
                at = summary.timed("checksums", at)
                await _swap(conn)
                if not stored:  # the live projection never ran: give it the rebuild's positions
                    await _store(conn, group, positions)
            at = summary.timed("swap", at)
            if not keep_previous:
                for table in TABLES:
                    await conn.execute(f"DROP TABLE IF EXISTS {PREVIOUS}{table}")
    summary.refused += projection.refused
    summary.seconds = time.monotonic() - started
    return summary


async def _bulk(
    conn: psycopg.AsyncConnection[Any],
    dsn: str,
    run: _Run,
    targets: dict[TopicPartition, int],
    bound: int,
    workers: int,
) -> None:
    """Fold and bulk-load up to ``targets`` (or until the fold holds ``bound`` keys), then
    build the keys the live projection's upserts need."""
    at = time.monotonic()
    await _drop_leftovers(conn)
    await bulk.create_bare(conn, TABLES, SHADOW)
    sink = bulk.BulkSink(dsn, SHADOW)
    await sink.open()
    try:
        if workers:
            pool = FoldPool(workers)
            try:
                await pool.start()
                await _fold_in(pool, sink, run, targets, bound)
                await sink.close()
                at = run.summary.timed("fold + streamed COPY", at)
                await _copy_from(pool, dsn, conn)
                run.summary.worker_rss_mb = pool.rss_mb
            finally:
                await pool.close()
        else:
            fold = await _fold_here(sink, run, targets, bound)
            await sink.close()
            at = run.summary.timed("fold + streamed COPY", at)
            await bulk.copy_folded(dsn, fold, SHADOW)
            del fold.incidents, fold.enrichments, fold.suspects  # gone before the index builds
            await bulk.write_links(conn, fold.links.values())
    except BaseException as exc:
        await sink.close(exc)
        raise
    at = run.summary.timed("folded COPY", at)
    run.summary.duplicates = await bulk.build_keys_parallel(dsn, TABLES, SHADOW, strict=FOLDED)
    run.summary.timed("keys", at)


def _bounded(run: _Run, keys: int, bound: int) -> bool:
    run.summary.keys = max(run.summary.keys, keys)
    if keys < bound:
        return False
    run.summary.fallback = (
        f"the fold reached {bound:,} keys (BLAMETRAIL_REPLAY_FOLD_MAX_INCIDENTS):"
        " the rest of the log was applied the live way"
    )
    return True


def _written(run: _Run, batch: Batch) -> None:
    run.summary.refused += batch.refused


async def _fold_here(
    sink: bulk.BulkSink, run: _Run, targets: dict[TopicPartition, int], bound: int
) -> Fold:
    """The fold in this process (in a thread: the event loop meanwhile feeds the COPY streams
    and fetches the next records)."""
    fold = Fold()
    while not run.reached(targets):
        records = await run.poll(targets)
        if records:
            written = await asyncio.to_thread(fold.add, records)
            await sink.write(written)
            _written(run, written)
            run.summary.folded += len(records)
            run.summary.applied += len(records)
        run.progress(targets)
        if _bounded(run, fold.keys, bound):
            break
    return fold


async def _fold_in(
    pool: FoldPool,
    sink: bulk.BulkSink,
    run: _Run,
    targets: dict[TopicPartition, int],
    bound: int,
) -> None:
    """The fold in the pool's workers: records sent as read, their COPY text streamed as it
    comes back (by a task of its own, so reading goes on meanwhile)."""

    async def stream() -> None:
        try:
            while (item := await pool.results.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                await sink.write(item)
                pool.written()
                _written(run, item)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the sink failed: add and drain raise it, never wait on
            pool.abort(exc)
            raise

    streaming = asyncio.create_task(stream())
    try:
        while not run.reached(targets) and not streaming.done():
            records = await run.poll(targets)
            if records:
                await pool.add(records)
                run.summary.folded += len(records)
                run.summary.applied += len(records)
            run.progress(targets)
            if pool.keys + pool.in_flight >= bound:
                # the records not folded yet may take the fold past the bound: wait for the
                # workers' count, so the bound holds as in one process (at most a batch past it)
                await pool.drain()
            if _bounded(run, pool.keys, bound):
                break
        await pool.drain()
        pool.results.put_nowait(None)
        await streaming
    finally:
        streaming.cancel()  # done or not: its exception counts as retrieved (raised here)


async def _copy_from(pool: FoldPool, dsn: str, conn: psycopg.AsyncConnection[Any]) -> None:
    """The workers' folded tables, each worker's on a connection of its own; then their links."""
    await pool.end()

    async def one(worker: int, db: psycopg.AsyncConnection[Any]) -> int:
        for table in FOLDED:
            await bulk.copy_chunks(db, table, SHADOW, pool.rows(worker, table))
        return 0

    # every worker's rows read at once: a worker whose rows are not read waits on its pipe
    # (the pool holds a few chunks a worker), so one read after another would wait in turn
    jobs = [functools.partial(one, i) for i in range(pool.workers)]
    await bulk.in_parallel(dsn, jobs, pool.workers)
    links = [link for i in range(pool.workers) for link in await pool.links(i)]
    await bulk.write_links(conn, links)


async def _restart_live(conn: psycopg.AsyncConnection[Any], run: _Run) -> None:
    """Back to offset zero, into fresh shadow tables with their keys, the live projection's way."""
    run.summary.refused = run.summary.applied = run.summary.folded = 0
    run.summary.duplicates = 0
    for tp, begin in run.begins.items():
        run.positions[tp] = begin
        run.reader.seek(tp, begin)
    await bulk.create_bare(conn, TABLES, SHADOW)
    await bulk.build_keys(conn, TABLES, SHADOW)


async def _drop_leftovers(conn: psycopg.AsyncConnection[Any]) -> None:
    for table in TABLES:
        await conn.execute(f"DROP TABLE IF EXISTS {PREVIOUS}{table}")


@dataclass
class _Run:
    reader: AIOKafkaConsumer
    projection: Projection
    positions: dict[TopicPartition, int]
    summary: RebuildSummary
    report: Report | None
    begins: dict[TopicPartition, int]

    def reached(self, targets: dict[TopicPartition, int]) -> bool:
        return all(self.positions[tp] >= t for tp, t in targets.items())

    async def poll(self, targets: dict[TopicPartition, int]) -> list[ConsumerRecord[bytes, bytes]]:
        """The next records before the targets. Records at or past a target are not returned;
        the reader is moved back to the target so they are read again later."""
        todo = [tp for tp, t in targets.items() if self.positions[tp] < t]
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
        return records

    def progress(self, targets: dict[TopicPartition, int]) -> None:
        if self.report is not None:
            done = sum(p - self.begins[tp] for tp, p in self.positions.items())
            total = sum(max(t, self.positions[tp]) - self.begins[tp] for tp, t in targets.items())
            self.report(done, total)

    async def until(
        self, conn: psycopg.AsyncConnection[Any], targets: dict[TopicPartition, int]
    ) -> None:
        """Apply records the live projection's way until every partition reached its target."""
        while not self.reached(targets):
            records = await self.poll(targets)
            if records:
                tx: Any = conn
                async with tx.transaction():
                    await self.projection.apply(conn, records)
                self.summary.applied += len(records)
            self.progress(targets)


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
