"""The Postgres projection: incident events, enrichment records, audit records, suspects -> tables.

The I/O half of the projector: the rows come from :mod:`blametrail_projector.rows` (pure), folded
to one row per key by :mod:`blametrail_projector.fold` (pure); the SQL that writes them and the
psycopg adaptation of their ``jsonb`` values live here. It runs in the projector's process
(``python -m blametrail_projector``) and in ``blametrail replay projection rebuild``. Effects and
offsets commit together (:mod:`blametrail_common.kafka.pgsink`): a restart resumes exactly, a
replay writes the same rows.

A batch is written set-based: each table's folded rows are streamed with ``COPY`` into a
session-local staging table (``TEMP``, emptied at commit), then merged with one
``INSERT ... SELECT ... ON CONFLICT`` per table (:data:`MERGES`: the conflict clause is each
table's order rule). So a batch costs a few statements, whatever its size. If Postgres refuses
the batch, it is redone record by record under savepoints, and only the records it still refuses
go to the dead-letter topic, with the reason.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import psycopg
from aiokafka import ConsumerRecord
from blametrail_common.kafka import EventProducer, publish_to_dlq
from prometheus_client import Counter
from psycopg.adapt import Dumper

from blametrail_projector.fold import concat_rows, fold_rows
from blametrail_projector.rows import STATE_COLUMNS, STATUS_COLUMNS, EncodedJson, Rows, rows_for

__all__ = ["MERGES", "PROJECTED_TOPICS", "TABLES", "Merge", "Projection"]

log = logging.getLogger(__name__)
APPLIED = Counter("blametrail_projection_rows_total", "Rows written by the projection", ["table"])
DEAD = Counter("blametrail_projection_dead_letters_total", "Records the projection could not apply")

PROJECTED_TOPICS = (
    "incident-events",
    "incident-enrichments",
    "webhook-audit",
    "incident-suspects",
    "incident-writebacks",
)
TABLES = (
    "incidents",
    "incident_timeline",
    "incident_enrichments",
    "webhook_audit",
    "incident_suspects",
)


@dataclass(frozen=True, slots=True)
class Merge:
    """How the rows of one :class:`~blametrail_projector.rows.Rows` table reach Postgres.

    ``columns`` are staged from the rows (their keys); ``derived`` are the target's columns
    computed from staged ones; ``conflict`` follows ``ON CONFLICT`` (the stored row is ``cur``,
    the batch's ``EXCLUDED``). ``shadowed``: a rebuild writes it under its table prefix (the
    links table is not one of :data:`TABLES`: the control plane writes it too).
    """

    rows: str
    table: str
    columns: tuple[str, ...]
    conflict: str
    derived: tuple[tuple[str, str], ...] = ()
    shadowed: bool = True

    def stage(self, prefix: str) -> str:
        return f"stage_{prefix if self.shadowed else ''}{self.rows}"

    def target(self, prefix: str) -> str:
        return f"{prefix if self.shadowed else ''}{self.table}"

    def create_stage(self, prefix: str) -> str:
        """A staging table of the target's column types without its constraints, kept for the
        session and emptied at every commit."""
        stage, target = self.stage(prefix), self.target(prefix)
        # S608: identifiers only, from this module's constants and the caller's table prefix
        return (
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS"  # noqa: S608
            f" SELECT {', '.join(self.columns)} FROM {target} WITH NO DATA"
        )

    def copy_into(self, table: str) -> str:
        return f"COPY {table} ({', '.join(self.columns)}) FROM STDIN"

    def insert(self, prefix: str, n: int) -> str:
        """The merge of ``n`` rows as one statement, their values as parameters (one round trip
        instead of three: the fast way for a few rows). Postgres' own ``$n`` placeholders, for
        a raw cursor: psycopg parses ``%s`` ones in Python, once per distinct text, which costs
        more than the round trips saved. A derived column repeats the parameter of the staged
        column it names."""
        return _insert(self.target(prefix), self.columns, self.derived, self.conflict, n)

    def values(self, rows: list[dict[str, Any]]) -> list[Any]:
        """The parameters of :meth:`insert` for ``rows``, row after row."""
        names = (*self.columns, *(e for _, e in self.derived))
        out: list[Any] = []
        for row in rows:
            out.extend(row[c] for c in names)
        return out

    def merge(self, prefix: str) -> str:
        """One statement: the staged rows leave the staging table (so a second batch in the
        same transaction, e.g. record by record after a refused batch, stages afresh) and are
        merged into the target."""
        names = (*self.columns, *(c for c, _ in self.derived))
        values = (*self.columns, *(e for _, e in self.derived))
        stage = self.stage(prefix)
        return (  # S608: identifiers only, as above
            f"WITH staged AS (DELETE FROM {stage} RETURNING *)"  # noqa: S608
            f" INSERT INTO {self.target(prefix)} AS cur ({', '.join(names)})"
            f" SELECT {', '.join(values)} FROM staged ON CONFLICT {self.conflict}"
        )


@functools.lru_cache(maxsize=1024)
def _insert(
    target: str,
    columns: tuple[str, ...],
    derived: tuple[tuple[str, str], ...],
    conflict: str,
    n: int,
) -> str:
    names = (*columns, *(c for c, _ in derived))
    width = len(names)
    rows = ("(" + ", ".join(f"${r * width + c + 1}" for c in range(width)) + ")" for r in range(n))
    # S608: identifiers only, as in ``Merge``; the values are parameters
    return (
        f"INSERT INTO {target} AS cur ({', '.join(names)})"  # noqa: S608
        f" VALUES {', '.join(rows)} ON CONFLICT {conflict}"
    )


_NEWER = "cur.state_order < EXCLUDED.state_order"  # incident_order: strict and total
# only status changes order the status (``rows.sets_status``); NULL: projected before 0026
_NEWER_STATUS = "COALESCE(cur.status_order, cur.state_order) < EXCLUDED.status_order"
_REASSIGNED = (
    "EXCLUDED.assignee_order IS NOT NULL"  # the batch holds an assignment (``sets_assignee``)
    " AND (cur.assignee_order IS NULL OR cur.assignee_order < EXCLUDED.assignee_order)"
)
# The service is never updated: incidents stay where they were opened (a mapping edit only
# routes new webhooks). A state that comes before the one shown (``incident_order``) is kept in
# the timeline and adds only to the merged columns (first/last seen, count, refs), so the row
# is the same in every delivery order (``rows.merge_incident`` is this in Python).
_INCIDENT_CONFLICT = (
    "(incident_id) DO UPDATE SET "
    + ", ".join(
        f"{c} = CASE WHEN {_NEWER} THEN EXCLUDED.{c} ELSE cur.{c} END"
        for c in (*STATE_COLUMNS, "state_order")
    )
    + ", "
    + ", ".join(
        f"{c} = CASE WHEN {_NEWER_STATUS} THEN EXCLUDED.{c} ELSE cur.{c} END"
        for c in (*STATUS_COLUMNS, "updated_at", "status_order")
    )
    + f""",
    assignee = CASE WHEN {_REASSIGNED} THEN EXCLUDED.assignee ELSE cur.assignee END,
    assignee_order = CASE WHEN {_REASSIGNED} THEN EXCLUDED.assignee_order ELSE cur.assignee_order END,
    sentry = CASE WHEN {_NEWER} THEN cur.sentry || EXCLUDED.sentry ELSE EXCLUDED.sentry || cur.sentry END,
    first_seen = LEAST(cur.first_seen, EXCLUDED.first_seen), last_seen = GREATEST(cur.last_seen, EXCLUDED.last_seen),
    event_count = GREATEST(cur.event_count, EXCLUDED.event_count),
    opened_at = LEAST(cur.opened_at, EXCLUDED.opened_at)"""
)
_ENRICHMENT = ("incident_id", "tenant_id", "event_id", "status", "reason", "record", "fetched_at")

# In this order: an enrichment replaces a failure, so the failures of a batch come after its
# enrichments (a failure only fills an incident that has nothing yet).
MERGES: tuple[Merge, ...] = (
    Merge(
        "incidents",
        "incidents",
        (
            "incident_id",
            "tenant_id",
            "service_id",
            "source",
            "status",
            "severity",
            "title",
            "culprit",
            "assignee",
            "sentry",
            "first_seen",
            "last_seen",
            "event_count",
            "opened_at",
            "resolved_at",
            "state_changed_at",
            "state_order",
            "status_order",
            "assignee_order",
        ),
        _INCIDENT_CONFLICT,
        derived=(("updated_at", "state_changed_at"),),  # a staged column (``Merge.insert``)
    ),
    Merge(
        "timeline",
        "incident_timeline",
        (
            "event_id",
            "incident_id",
            "tenant_id",
            "event_type",
            "occurred_at",
            "log_partition",
            "log_offset",
            "payload",
            "sanitized",
        ),
        "(event_id) DO NOTHING",
    ),
    Merge(
        "enriched",
        "incident_enrichments",
        (*_ENRICHMENT, "sanitized"),
        "(incident_id) DO UPDATE SET event_id = EXCLUDED.event_id, status = EXCLUDED.status,"
        " reason = NULL, record = EXCLUDED.record, fetched_at = EXCLUDED.fetched_at,"
        " sanitized = EXCLUDED.sanitized"
        " WHERE cur.status = 'failed' OR cur.fetched_at <= EXCLUDED.fetched_at",
    ),
    Merge(
        "failed", "incident_enrichments", (*_ENRICHMENT, "sanitized"), "(incident_id) DO NOTHING"
    ),
    Merge(
        "audit",
        "webhook_audit",
        (
            "event_id",
            "tenant_id",
            "connection_id",
            "reason",
            "resource",
            "action",
            "project_slug",
            "project_id",
            "detail",
            "received_at",
            "sanitized",
        ),
        "(event_id) DO NOTHING",
    ),
    Merge(
        "suspects",
        "incident_suspects",
        ("incident_id", "tenant_id", "event_id", "computed_at", "candidates", "suspects"),
        "(incident_id) DO UPDATE SET event_id = EXCLUDED.event_id,"
        " computed_at = EXCLUDED.computed_at, candidates = EXCLUDED.candidates,"
        " suspects = EXCLUDED.suspects WHERE cur.computed_at <= EXCLUDED.computed_at",
    ),
    # Not one of TABLES (a rebuild leaves it alone): the control plane writes links made from
    # Sentry's issue-link component here too. This only records the external issue made in Sentry.
    Merge(
        "links",
        "sentry_issue_links",
        (
            "incident_id",
            "connection_id",
            "sentry_issue_id",
            "web_url",
            "external_issue_id",
            "linked_at",
        ),
        "(incident_id, connection_id, sentry_issue_id) DO UPDATE SET"
        " external_issue_id = EXCLUDED.external_issue_id,"
        " web_url = COALESCE(EXCLUDED.web_url, cur.web_url)",
        shadowed=False,
    ),
)
_APPEND_ONLY = ("timeline", "audit")  # what a sole writer (``bulk``) copies straight in


class _EncodedJsonDumper(Dumper):
    """:class:`~blametrail_projector.rows.EncodedJson` as ``jsonb`` (text format, so ``COPY``
    takes it too): its bytes are already JSON that Postgres accepts."""

    oid = psycopg.postgres.types["jsonb"].oid

    def dump(self, obj: EncodedJson) -> bytes:
        return obj.encoded


def _retrieved(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _copy(
    cur: psycopg.AsyncCursor[Any],
    statement: str,
    columns: tuple[str, ...],
    rows: list[dict[str, Any]],
) -> None:
    if not rows:
        return
    values = itemgetter(*columns)
    async with cur.copy(statement) as copy:
        for row in rows:
            await copy.write_row(values(row))


class Projection:
    """Applies batches; ``table_prefix`` lets a rebuild write into shadow tables.

    A batch is written in chunks of ``chunk`` records, one staged merge per table each, and the
    next chunk's rows are computed (``decode_slice`` records between yields to the event loop) while
    Postgres merges the one before: decoding and Postgres' work overlap on two cores. Given to
    the consumer loop as its ``ahead`` (:func:`~blametrail_common.kafka.pgsink.run_into_postgres`),
    :meth:`ahead` computes the next batch's rows while Postgres writes and commits this one. The
    slices are short (a few records, well under a millisecond), so a statement's answer waits
    little for the decoding before the write sends the next: measured (``bench/pipeline``, the
    same run), the next batch ahead with slices of 50 gave 1.07x the events/s of none, with
    slices of 5 or 10, 1.17-1.36x.

    Without a producer, records Postgres refuses are only counted (``refused``): a rebuild
    re-reads records the live projection already dead-lettered and must not send them twice.
    ``bulk`` is for a sole writer of its tables (a rebuild's shadow tables): the insert-only
    tables are copied straight in, and the ``ON CONFLICT DO NOTHING`` of the merge is kept by
    remembering the event ids written so far.

    A table with at most ``values_max`` rows in a chunk takes one ``INSERT ... VALUES ...
    ON CONFLICT`` (the same conflict rule) instead of staging: a storm arrives in many small
    batches, and staging costs three round trips a table however few its rows. Measured (one
    event a batch; 300): the projector's CPU 2.9 -> 1.5 ms a batch, Postgres' 1.45 -> 0.7 ms;
    68 against 85 µs an event; from about 1,000 rows a table ``COPY`` costs Postgres less.
    """

    def __init__(
        self,
        producer: EventProducer | None,
        table_prefix: str = "",
        *,
        bulk: bool = False,
        chunk: int = 1000,
        decode_slice: int = 5,
        values_max: int = 300,
    ) -> None:
        self.producer = producer
        self.refused = 0
        self._prefix = table_prefix
        self._written: set[Any] | None = set() if bulk else None
        self._chunk, self._slice = max(chunk, 1), max(decode_slice, 1)
        self._values_max = values_max
        # the batches :meth:`ahead` was given (oldest first, at most two: the one the loop's
        # transaction in flight is about to take and the next) and their chunks' rows
        self._ahead: list[tuple[list[ConsumerRecord[bytes, bytes]], list[asyncio.Task[Rows]]]] = []

    def ahead(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Start computing the rows of a batch :meth:`apply` will be given (pure work: nothing
        is written or dead-lettered before ``apply``). A batch ``apply`` gets that is none of
        those given computes its own, and drops those."""
        records = list(records)
        tasks: list[asyncio.Task[Rows]] = []
        for start in range(0, len(records), self._chunk):
            before = tasks[-1] if tasks else None
            chunk = records[start : start + self._chunk]
            tasks.append(asyncio.create_task(self._rows_after(before, chunk)))
            tasks[-1].add_done_callback(_retrieved)  # one dropped may have failed: no warning
        self._ahead.append((records, tasks))
        if len(self._ahead) > 2:
            self._drop_ahead(1)

    async def _rows_after(
        self, before: asyncio.Task[Rows] | None, records: list[ConsumerRecord[bytes, bytes]]
    ) -> Rows:
        if before is not None:  # chunk after chunk, so the first is ready first
            await asyncio.wait([before])
        return await self._rows(records)

    def _take_ahead(
        self, records: list[ConsumerRecord[bytes, bytes]]
    ) -> list[asyncio.Task[Rows]] | None:
        """The chunks' rows :meth:`ahead` computes for exactly ``records``, if it was given them
        (the batches given before them are dropped)."""
        for i, (seen, tasks) in enumerate(self._ahead):
            if len(seen) == len(records) and all(
                a is b for a, b in zip(seen, records, strict=True)
            ):
                self._drop_ahead(i)
                del self._ahead[0]
                return tasks
        self._drop_ahead(len(self._ahead))
        return None

    def _drop_ahead(self, n: int) -> None:
        """Forget the ``n`` oldest batches given to :meth:`ahead`."""
        for _, tasks in self._ahead[:n]:
            for task in tasks:
                task.cancel()
        del self._ahead[:n]

    async def apply(
        self, conn: psycopg.AsyncConnection[Any], records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> None:
        """Write a batch (inside the caller's transaction). Dead letters are acknowledged before
        this returns, so the caller's commit never skips a record without a trace."""
        records = list(records)
        fresh: set[Any] = set()
        undecodable: set[int] = set()  # positions in ``records`` already dead-lettered
        try:
            async with conn.transaction():
                await self._chunks(conn, records, fresh, undecodable)
        except psycopg.Error as exc:
            log.warning(
                "batch refused, retrying record by record", extra={"error": type(exc).__name__}
            )
            fresh.clear()
            for i, record in enumerate(records):
                if i not in undecodable:
                    await self._one(conn, record, fresh)
        if self._written is not None:  # only once the whole batch is written
            self._written |= fresh

    async def write(self, conn: psycopg.AsyncConnection[Any], rows: Rows) -> None:
        """Stage and merge rows computed beforehand (:func:`~blametrail_projector.rows.rows_for`)
        in one go, inside the caller's transaction. Raises ``psycopg.Error`` if Postgres refuses
        them: rows carry no records to dead-letter (``bench/pipeline`` times this alone)."""
        fresh: set[Any] = set()
        await self._write(conn, rows, fresh)
        if self._written is not None:
            self._written |= fresh

    async def _chunks(
        self,
        conn: psycopg.AsyncConnection[Any],
        records: list[ConsumerRecord[bytes, bytes]],
        fresh: set[Any],
        undecodable: set[int],
    ) -> None:
        """Write ``records`` chunk by chunk, computing a chunk's rows while the previous one is
        written (one write in flight: the connection runs one statement at a time), or taking
        them from :meth:`ahead`. Records that are no event are dead-lettered on the way (their
        positions go to ``undecodable``)."""
        writing: asyncio.Task[None] | None = None
        position = {id(r): i for i, r in enumerate(records)}
        ready = self._take_ahead(records)
        try:
            for n, start in enumerate(range(0, len(records), self._chunk)):
                chunk = records[start : start + self._chunk]
                rows = await (ready[n] if ready is not None else self._rows(chunk))
                for record, reason in rows.undecodable:
                    await self._dead(record, reason)
                    undecodable.add(position[id(record)])
                if writing is not None:
                    await writing
                writing = asyncio.create_task(self._write(conn, rows, fresh))
            if writing is not None:
                await writing
        finally:  # never leave a statement running on the connection the caller rolls back
            if writing is not None:
                await asyncio.gather(writing, return_exceptions=True)
            for task in ready or ():
                task.cancel()

    async def _rows(self, records: list[ConsumerRecord[bytes, bytes]]) -> Rows:
        parts = []
        for start in range(0, len(records), self._slice):
            parts.append(rows_for(records[start : start + self._slice]))
            await asyncio.sleep(0)  # let the write in flight read its answer and send the next
        return concat_rows(parts)

    async def _one(
        self,
        conn: psycopg.AsyncConnection[Any],
        record: ConsumerRecord[bytes, bytes],
        fresh: set[Any],
    ) -> None:
        mine: set[Any] = set()
        rows = rows_for([record])
        for _, reason in rows.undecodable:  # one the batch did not reach before it was refused
            await self._dead(record, reason)
        try:
            async with conn.transaction():
                await self._write(conn, rows, fresh | mine, into=mine)
        except psycopg.Error as exc:
            await self._dead(record, f"postgres refused the record: {type(exc).__name__}: {exc}")
        else:
            fresh |= mine

    async def _write(
        self,
        conn: psycopg.AsyncConnection[Any],
        rows: Rows,
        fresh: set[Any],
        *,
        into: set[Any] | None = None,
    ) -> None:
        """Stage and merge each table's rows of ``rows``, folded to one row per key. In bulk
        mode the event ids copied straight in are added to ``into`` (default ``fresh``), and
        those already in ``fresh`` or written by an earlier batch are left out."""
        folded, prefix = fold_rows(rows), self._prefix
        async with psycopg.AsyncRawCursor(conn) as cur:  # ``Merge.insert``: $n
            cur.adapters.register_dumper(EncodedJson, _EncodedJsonDumper)
            for spec in MERGES:
                batch: list[dict[str, Any]] = getattr(folded, spec.rows)
                if self._written is not None and spec.rows in _APPEND_ONLY:
                    old, new = self._written, fresh
                    batch = [
                        r for r in batch if r["event_id"] not in old and r["event_id"] not in new
                    ]
                    await _copy(cur, spec.copy_into(spec.target(prefix)), spec.columns, batch)
                    (fresh if into is None else into).update(r["event_id"] for r in batch)
                elif batch and len(batch) <= self._values_max:
                    await cur.execute(spec.insert(prefix, len(batch)), spec.values(batch))
                elif batch and spec.rows in _APPEND_ONLY:
                    await self._append(conn, cur, spec, batch)
                elif batch:
                    await self._merge(cur, spec, batch)
                APPLIED.labels(spec.rows).inc(len(batch))

    async def _merge(
        self, cur: psycopg.AsyncCursor[Any], spec: Merge, batch: list[dict[str, Any]]
    ) -> None:
        await cur.execute(spec.create_stage(self._prefix))
        await _copy(cur, spec.copy_into(spec.stage(self._prefix)), spec.columns, batch)
        await cur.execute(spec.merge(self._prefix))

    async def _append(
        self,
        conn: psycopg.AsyncConnection[Any],
        cur: psycopg.AsyncCursor[Any],
        spec: Merge,
        batch: list[dict[str, Any]],
    ) -> None:
        """An insert-only table's rows (``ON CONFLICT (event_id) DO NOTHING``): copied straight
        in under a savepoint, which a record delivered again (its event id stored already)
        refuses as a whole; then they take the staged merge, which leaves the stored ones be.
        Straight in costs Postgres about a quarter less per row (no staging table to fill,
        read and empty), and redelivery is rare: after a crash, once per batch."""
        try:
            async with conn.transaction():
                await _copy(cur, spec.copy_into(spec.target(self._prefix)), spec.columns, batch)
        except psycopg.errors.UniqueViolation:
            await self._merge(cur, spec, batch)

    async def _dead(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        self.refused += 1
        if self.producer is None:
            return
        DEAD.inc()
        logical = record.topic.removeprefix(self.producer.prefix)
        await publish_to_dlq(self.producer, f"{logical}-dlq", record, reason)
