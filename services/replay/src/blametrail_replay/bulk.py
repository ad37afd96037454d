"""The bulk load of a rebuild: empty shadow tables without indexes, ``COPY``, then the indexes.

I/O only; the rows come from :mod:`blametrail_replay.fold` (pure). The append-only tables are
streamed while the log is read (one connection and one ``COPY`` each, so Postgres parses on its
own core while this process decodes); the folded tables are copied once the fold is done. Then
every index and key constraint of the live table is built once, on the loaded rows. A key that
is not unique there (an event delivered twice) is resolved as ``ON CONFLICT DO NOTHING`` would:
the first of the event's rows in the log stays.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import Any

import psycopg

from blametrail_replay.fold import COLUMNS, Batch, Fold

__all__ = [
    "PARALLEL",
    "STREAMED",
    "BulkSink",
    "FoldedDuplicate",
    "build_keys",
    "build_keys_parallel",
    "build_secondary",
    "build_secondary_parallel",
    "connect",
    "copy_chunks",
    "copy_folded",
    "copy_lines",
    "create_bare",
    "in_parallel",
    "write_links",
]

STREAMED = ("incident_timeline", "webhook_audit")
# Connections working at once after the log is read (COPY of the folded rows, key and index
# builds: Postgres does each on one core, and the rebuild's own process is idle by then).
PARALLEL = 2
_CHUNK = 256 * 1024
_QUEUED = 4  # batches a streamed table holds for Postgres at most (about 10 MB each)
# Which of two rows with one key is the first in the log (for the tables that keep the first).
_FIRST_OF = {"incident_timeline": "log_partition, log_offset, ctid", "webhook_audit": "ctid"}
_LINKS = """
INSERT INTO sentry_issue_links (incident_id, connection_id, sentry_issue_id, web_url, external_issue_id,
    linked_at)
VALUES (%(incident_id)s, %(connection_id)s, %(sentry_issue_id)s, %(web_url)s, %(external_issue_id)s,
    %(linked_at)s)
ON CONFLICT (incident_id, connection_id, sentry_issue_id) DO UPDATE SET
    external_issue_id = EXCLUDED.external_issue_id,
    web_url = COALESCE(EXCLUDED.web_url, sentry_issue_links.web_url)
"""


async def create_bare(
    conn: psycopg.AsyncConnection[Any], tables: Iterable[str], prefix: str
) -> None:
    """``<prefix><table>`` like each live table (columns, defaults, checks), without any index."""
    for table in tables:
        await conn.execute(f"DROP TABLE IF EXISTS {prefix}{table}")
        await conn.execute(
            f"CREATE TABLE {prefix}{table} (LIKE {table} INCLUDING ALL EXCLUDING INDEXES)"
        )


async def copy_lines(
    conn: psycopg.AsyncConnection[Any], table: str, prefix: str, lines: Iterable[bytes]
) -> int:
    """COPY text lines (``fold.COLUMNS[table]`` order) into ``<prefix><table>``; returns how many."""
    n, buf, size = 0, [], 0
    async with conn.cursor() as cur:
        statement = f"COPY {prefix}{table} ({', '.join(COLUMNS[table])}) FROM STDIN"
        async with cur.copy(statement) as copy:
            for line in lines:
                buf.append(line)
                size += len(line)
                n += 1
                if size >= _CHUNK:
                    await copy.write(b"".join(buf))
                    buf, size = [], 0
            if buf:
                await copy.write(b"".join(buf))
    return n


async def copy_chunks(
    conn: psycopg.AsyncConnection[Any], table: str, prefix: str, chunks: AsyncIterable[bytes]
) -> int:
    """COPY text (whole lines, ``fold.COLUMNS[table]`` order) into ``<prefix><table>``; returns
    how many bytes."""
    n = 0
    async with conn.cursor() as cur:
        statement = f"COPY {prefix}{table} ({', '.join(COLUMNS[table])}) FROM STDIN"
        async with cur.copy(statement) as copy:
            async for chunk in chunks:
                await copy.write(chunk)
                n += len(chunk)
    return n


class FoldedDuplicate(psycopg.IntegrityError):
    """A key found twice in a folded table, which holds one row per key: it was folded in two
    groups of partitions (a topic not keyed by it), so neither row is the merge of all."""


class BulkSink:
    """The streaming half: one open ``COPY`` per append-only table, on a connection of its own.

    Writes are queued, a few batches deep (:data:`_QUEUED`), and sent by a task per table, so
    decoding goes on while Postgres parses, and what waits for Postgres stays bounded (psycopg's
    own queued writer holds up to 1,024 chunks of 128 KB a table: 128 MB each, 256 MB for the
    two). The ``COPY`` ends, and its rows become visible, at :meth:`close`; an error of Postgres
    surfaces there (or at a later write) as a ``psycopg.Error``.
    """

    def __init__(self, dsn: str, prefix: str) -> None:
        self._dsn, self._prefix = dsn, prefix
        self._conns: list[psycopg.AsyncConnection[Any]] = []
        self._queues: dict[str, asyncio.Queue[bytes]] = {}
        self._senders: list[asyncio.Task[None]] = []
        self._exits: list[Any] = []
        self._failed: list[BaseException] = []

    async def open(self) -> None:
        for table in STREAMED:
            conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
            self._conns.append(conn)
            await conn.execute("SET synchronous_commit = off")
            cur = conn.cursor()
            statement = f"COPY {self._prefix}{table} ({', '.join(COLUMNS[table])}) FROM STDIN"
            ctx = cur.copy(statement)
            copy = await ctx.__aenter__()
            self._exits.append(ctx)
            queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=_QUEUED)
            self._queues[table] = queue
            self._senders.append(asyncio.create_task(_send(copy, queue, self._failed)))

    async def write(self, batch: Batch) -> None:
        if self._failed:  # Postgres refused a row
            raise self._failed[0]
        if batch.timeline:
            await self._queues["incident_timeline"].put(batch.timeline)
        if batch.audit:
            await self._queues["webhook_audit"].put(batch.audit)

    async def close(self, error: BaseException | None = None) -> None:
        """End every ``COPY`` (committed unless ``error``) and close the connections."""
        try:
            if error is None:
                for queue in self._queues.values():
                    await queue.put(b"")
                for sender in self._senders:
                    await sender
                if self._failed:
                    raise self._failed[0]
            else:
                for sender in self._senders:
                    sender.cancel()
                await asyncio.gather(*self._senders, return_exceptions=True)
            for ctx in self._exits:
                exc = (type(error), error, error.__traceback__) if error else (None, None, None)
                await ctx.__aexit__(*exc)
        finally:
            for conn in self._conns:
                await conn.close()
            self._exits, self._conns, self._queues, self._senders = [], [], {}, []


async def _send(copy: Any, queue: asyncio.Queue[bytes], failed: list[BaseException]) -> None:
    try:
        while data := await queue.get():
            await copy.write(data)
    except Exception as exc:  # told to the next write; the queue is emptied, never blocks it
        failed.append(exc)
        while await queue.get():
            pass


async def connect(dsn: str) -> psycopg.AsyncConnection[Any]:
    """A connection of the bulk load: autocommit, no wait for the WAL flush (a crash before
    the swap restarts the rebuild from zero)."""
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    await conn.execute("SET synchronous_commit = off")
    return conn


async def in_parallel(
    dsn: str,
    jobs: Iterable[Callable[[psycopg.AsyncConnection[Any]], Awaitable[int | None]]],
    connections: int = PARALLEL,
) -> int:
    """Run ``jobs`` on ``connections`` connections of their own, a job at a time each, in the
    order given; returns the sum of what they return. The first error cancels the rest and is
    raised (itself, not in an exception group)."""
    todo = iter(list(jobs))
    total = 0

    async def worker() -> None:
        nonlocal total
        async with await connect(dsn) as conn:
            for job in todo:  # shared: each job taken by one worker
                done = await job(conn)  # (not ``total += await``: it reads total before)
                total += done or 0

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(connections):
                group.create_task(worker())
    except BaseExceptionGroup as failed:  # the caller tells a refused row from the rest
        raise failed.exceptions[0] from None
    return total


async def copy_folded(dsn: str, fold: Fold, prefix: str, streams: int = PARALLEL) -> int:
    """The folded tables' rows, each table in ``streams`` ``COPY`` streams at once."""
    jobs = []
    for table in ("incidents", "incident_enrichments", "incident_suspects"):
        for k in range(streams):

            async def job(conn: psycopg.AsyncConnection[Any], t: str = table, k: int = k) -> int:
                return await copy_lines(conn, t, prefix, fold.lines(t, k, streams))

            jobs.append(job)
    return await in_parallel(dsn, jobs, streams)


async def write_links(conn: psycopg.AsyncConnection[Any], links: Iterable[dict[str, Any]]) -> None:
    """The folded Sentry issue links (``Fold.links``' values) into the live table (not one a
    rebuild swaps): the same upsert the projection runs, once per link."""
    links = list(links)
    if links:
        async with conn.cursor() as cur:
            await cur.executemany(_LINKS, links)


async def build_keys(
    conn: psycopg.AsyncConnection[Any],
    tables: Iterable[str],
    prefix: str,
    strict: Iterable[str] = (),
) -> int:
    """Each live table's primary and unique keys (and unique indexes), built on
    ``<prefix><table>``; returns how many duplicate rows were removed first (the later rows
    of a key, as ``ON CONFLICT DO NOTHING`` would have kept the first). A duplicate in one of
    the ``strict`` tables raises :class:`FoldedDuplicate`."""
    removed, strict = 0, set(strict)
    await conn.execute("SET maintenance_work_mem = '256MB'")
    for table in tables:
        removed += await _build_table_keys(conn, table, prefix, table in strict)
    return removed


async def build_keys_parallel(
    dsn: str, tables: Iterable[str], prefix: str, strict: Iterable[str] = ()
) -> int:
    """:func:`build_keys`, a table at a time on each of ``PARALLEL`` connections."""
    strict = tuple(strict)
    return await in_parallel(
        dsn,
        [
            functools.partial(build_keys, tables=(t,), prefix=prefix, strict=strict)
            for t in _largest(tables)
        ],
    )


async def build_secondary_parallel(dsn: str, tables: Iterable[str], prefix: str) -> None:
    """:func:`build_secondary`, a table at a time on each of ``PARALLEL`` connections."""

    async def one(conn: psycopg.AsyncConnection[Any], table: str) -> None:
        await build_secondary(conn, (table,), prefix)

    await in_parallel(dsn, [functools.partial(one, table=t) for t in _largest(tables)])


def _largest(tables: Iterable[str]) -> list[str]:
    # the longest builds first, so that the last one to start is a short one
    order = {"incident_timeline": 0, "incidents": 1, "webhook_audit": 2}
    return sorted(tables, key=lambda t: order.get(t, 3))


async def _build_table_keys(
    conn: psycopg.AsyncConnection[Any], table: str, prefix: str, strict: bool = False
) -> int:
    removed, shadow = 0, f"{prefix}{table}"
    cur = await conn.execute(
        "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c"
        " WHERE c.conrelid = %s::regclass AND c.contype IN ('p', 'u')",
        (table,),
    )
    for (definition,) in await cur.fetchall():
        try:
            async with conn.transaction():
                await conn.execute(f"ALTER TABLE {shadow} ADD {definition}".encode())
        except psycopg.errors.UniqueViolation as exc:
            if strict:
                raise FoldedDuplicate(f"{shadow}: {exc}") from exc
            removed += await _keep_first(conn, table, shadow, str(definition))
            await conn.execute(f"ALTER TABLE {shadow} ADD {definition}".encode())
    await _plain_indexes(conn, table, shadow, unique=True)
    return removed


async def build_secondary(
    conn: psycopg.AsyncConnection[Any], tables: Iterable[str], prefix: str
) -> None:
    """Each live table's non-unique indexes, built on ``<prefix><table>`` (one sorted build
    each, where row-by-row maintenance during the load would cost far more)."""
    await conn.execute("SET maintenance_work_mem = '256MB'")
    for table in tables:
        await _plain_indexes(conn, table, f"{prefix}{table}", unique=False)


async def _plain_indexes(
    conn: psycopg.AsyncConnection[Any], table: str, shadow: str, *, unique: bool
) -> None:
    """The live table's indexes that back no constraint, unique or not, built on ``shadow``."""
    cur = await conn.execute(
        "SELECT pg_get_indexdef(x.indexrelid) FROM pg_index x"
        " WHERE x.indrelid = %s::regclass AND x.indisunique = %s AND NOT EXISTS"
        " (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)",
        (table, unique),
    )
    for (definition,) in await cur.fetchall():
        shape = str(definition).split(" USING ", 1)[1]
        kind = "UNIQUE INDEX" if unique else "INDEX"
        await conn.execute(f"CREATE {kind} ON {shadow} USING {shape}".encode())


async def _keep_first(
    conn: psycopg.AsyncConnection[Any], table: str, shadow: str, definition: str
) -> int:
    key = definition.split("(", 1)[1].rsplit(")", 1)[0]
    order = _FIRST_OF.get(table, "ctid")
    cur = await conn.execute(
        f"DELETE FROM {shadow} WHERE ctid IN (SELECT ctid FROM (SELECT ctid, row_number() OVER"  # noqa: S608
        f" (PARTITION BY {key} ORDER BY {order}) AS n FROM {shadow}) d WHERE n > 1)"
    )
    return cur.rowcount
