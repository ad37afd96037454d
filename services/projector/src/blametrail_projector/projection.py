"""The Postgres projection: incident events, enrichment records, audit records, suspects -> tables.

The I/O half of the projector: the rows come from :mod:`blametrail_projector.rows` (pure), the
SQL that writes them and the psycopg adaptation of their ``jsonb`` values live here. It runs in
the projector's process (``python -m blametrail_projector``) and in ``blametrail replay
projection rebuild``. Effects and offsets commit together (:mod:`blametrail_common.kafka.pgsink`):
a restart resumes exactly, a replay writes the same rows. A batch is written with one
``executemany`` per table; if Postgres refuses it, the batch is redone record by record under
savepoints, and only the records it still refuses go to the dead-letter topic, with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import psycopg
from aiokafka import ConsumerRecord
from blametrail_common.kafka import EventProducer, publish_to_dlq
from prometheus_client import Counter
from psycopg.adapt import Dumper

from blametrail_projector.rows import STATE_COLUMNS, EncodedJson, Rows, rows_for

__all__ = ["PROJECTED_TOPICS", "TABLES", "Projection"]

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

_NEWER = "cur.state_order < EXCLUDED.state_order"  # incident_order: strict and total
_REASSIGNED = "%(sets_assignee)s AND (cur.assignee_order IS NULL OR cur.assignee_order < EXCLUDED.assignee_order)"
_INCIDENT = (
    """
INSERT INTO {p}incidents AS cur (incident_id, tenant_id, service_id, source, status, severity, title, culprit,
    assignee, sentry, first_seen, last_seen, event_count, opened_at, resolved_at, state_changed_at, updated_at,
    state_order, assignee_order)
VALUES (%(incident_id)s, %(tenant_id)s, %(service_id)s, %(source)s, %(status)s, %(severity)s, %(title)s,
    %(culprit)s, %(assignee)s, %(sentry)s, %(first_seen)s, %(last_seen)s, %(event_count)s, %(opened_at)s,
    %(resolved_at)s, %(state_changed_at)s, %(state_changed_at)s, %(state_order)s, %(assignee_order)s)
ON CONFLICT (incident_id) DO UPDATE SET
"""
    + ",\n".join(
        f"    {c} = CASE WHEN {_NEWER} THEN EXCLUDED.{c} ELSE cur.{c} END"
        for c in (*STATE_COLUMNS, "updated_at", "state_order")
    )
    + f""",
    assignee = CASE WHEN {_REASSIGNED} THEN EXCLUDED.assignee ELSE cur.assignee END,
    assignee_order = CASE WHEN {_REASSIGNED} THEN EXCLUDED.assignee_order ELSE cur.assignee_order END,
    sentry = CASE WHEN {_NEWER} THEN cur.sentry || EXCLUDED.sentry ELSE EXCLUDED.sentry || cur.sentry END,
    first_seen = LEAST(cur.first_seen, EXCLUDED.first_seen), last_seen = GREATEST(cur.last_seen, EXCLUDED.last_seen),
    event_count = GREATEST(cur.event_count, EXCLUDED.event_count),
    opened_at = LEAST(cur.opened_at, EXCLUDED.opened_at)
"""
)
# The service is never updated: incidents stay where they were opened (a mapping edit only
# routes new webhooks). A state that comes before the one shown (``incident_order``) is kept in
# the timeline and adds only to the merged columns (first/last seen, count, refs), so the row
# is the same in every delivery order (``rows.merge_incident`` is this in Python).
_TIMELINE = """
INSERT INTO {p}incident_timeline (event_id, incident_id, tenant_id, event_type, occurred_at, log_partition,
    log_offset, payload, sanitized)
VALUES (%(event_id)s, %(incident_id)s, %(tenant_id)s, %(event_type)s, %(occurred_at)s, %(log_partition)s,
    %(log_offset)s, %(payload)s, %(sanitized)s)
ON CONFLICT (event_id) DO NOTHING
"""
_ENRICHED = """
INSERT INTO {p}incident_enrichments AS cur (incident_id, tenant_id, event_id, status, reason, record, fetched_at,
    sanitized)
VALUES (%(incident_id)s, %(tenant_id)s, %(event_id)s, %(status)s, %(reason)s, %(record)s, %(fetched_at)s,
    %(sanitized)s)
ON CONFLICT (incident_id) DO UPDATE SET event_id = EXCLUDED.event_id, status = EXCLUDED.status, reason = NULL,
    record = EXCLUDED.record, fetched_at = EXCLUDED.fetched_at, sanitized = EXCLUDED.sanitized
WHERE cur.status = 'failed' OR cur.fetched_at <= EXCLUDED.fetched_at
"""
_FAILED = """
INSERT INTO {p}incident_enrichments (incident_id, tenant_id, event_id, status, reason, record, fetched_at, sanitized)
VALUES (%(incident_id)s, %(tenant_id)s, %(event_id)s, %(status)s, %(reason)s, %(record)s, %(fetched_at)s,
    %(sanitized)s)
ON CONFLICT (incident_id) DO NOTHING
"""
_AUDIT = """
INSERT INTO {p}webhook_audit (event_id, tenant_id, connection_id, reason, resource, action, project_slug,
    project_id, detail, received_at, sanitized)
VALUES (%(event_id)s, %(tenant_id)s, %(connection_id)s, %(reason)s, %(resource)s, %(action)s, %(project_slug)s,
    %(project_id)s, %(detail)s, %(received_at)s, %(sanitized)s)
ON CONFLICT (event_id) DO NOTHING
"""


_COPIED = {  # insert-only tables a sole writer may fill with COPY (see ``bulk``)
    "timeline": (
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
    ),
    "audit": (
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
    ),
}
_SUSPECTS = """
INSERT INTO {p}incident_suspects AS cur (incident_id, tenant_id, event_id, computed_at, candidates, suspects)
VALUES (%(incident_id)s, %(tenant_id)s, %(event_id)s, %(computed_at)s, %(candidates)s, %(suspects)s)
ON CONFLICT (incident_id) DO UPDATE SET event_id = EXCLUDED.event_id, computed_at = EXCLUDED.computed_at,
    candidates = EXCLUDED.candidates, suspects = EXCLUDED.suspects
WHERE cur.computed_at <= EXCLUDED.computed_at
"""
# Not one of TABLES (a rebuild leaves it alone): the control plane writes links made from
# Sentry's issue-link component here too. This only records the external issue made in Sentry.
_LINKS = """
INSERT INTO sentry_issue_links (incident_id, connection_id, sentry_issue_id, web_url, external_issue_id,
    linked_at)
VALUES (%(incident_id)s, %(connection_id)s, %(sentry_issue_id)s, %(web_url)s, %(external_issue_id)s,
    %(linked_at)s)
ON CONFLICT (incident_id, connection_id, sentry_issue_id) DO UPDATE SET
    external_issue_id = EXCLUDED.external_issue_id,
    web_url = COALESCE(EXCLUDED.web_url, sentry_issue_links.web_url)
"""


class _EncodedJsonDumper(Dumper):
    """:class:`~blametrail_projector.rows.EncodedJson` as ``jsonb`` (text format, so ``COPY``
    takes it too): its bytes are already JSON that Postgres accepts."""

    oid = psycopg.postgres.types["jsonb"].oid

    def dump(self, obj: EncodedJson) -> bytes:
        return obj.encoded


class Projection:
    """Applies batches; ``table_prefix`` lets a rebuild write into shadow tables.

    Without a producer, records Postgres refuses are only counted (``refused``): a rebuild
    re-reads records the live projection already dead-lettered and must not send them twice.
    ``bulk`` is for a sole writer of its tables (a rebuild's shadow tables): the insert-only
    tables are written with ``COPY``, and the ``ON CONFLICT DO NOTHING`` of the SQL path is kept
    by remembering the event ids written so far.
    """

    def __init__(
        self, producer: EventProducer | None, table_prefix: str = "", *, bulk: bool = False
    ) -> None:
        self.producer = producer
        self.refused = 0
        self._prefix = table_prefix
        self._written: set[Any] | None = set() if bulk else None
        self._sql = [
            (name, sql.format(p=table_prefix))
            for name, sql in (
                ("incidents", _INCIDENT),
                ("timeline", _TIMELINE),
                ("enriched", _ENRICHED),
                ("failed", _FAILED),
                ("audit", _AUDIT),
                ("suspects", _SUSPECTS),
                ("links", _LINKS),
            )
        ]

    async def apply(
        self, conn: psycopg.AsyncConnection[Any], records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> None:
        """Write a batch (inside the caller's transaction). Dead letters are acknowledged before
        this returns, so the caller's commit never skips a record without a trace."""
        rows = rows_for(list(records))
        for record, reason in rows.undecodable:
            await self._dead(record, reason)
        try:
            async with conn.transaction():
                await self._write(conn, rows)
        except psycopg.Error as exc:
            log.warning(
                "batch refused, retrying record by record", extra={"error": type(exc).__name__}
            )
            for record in records:
                await self._one(conn, record)

    async def _one(
        self, conn: psycopg.AsyncConnection[Any], record: ConsumerRecord[bytes, bytes]
    ) -> None:
        try:
            async with conn.transaction():
                await self._write(conn, rows_for([record]))
        except psycopg.Error as exc:
            await self._dead(record, f"postgres refused the record: {type(exc).__name__}: {exc}")

    async def _write(self, conn: psycopg.AsyncConnection[Any], rows: Rows) -> None:
        copied: list[list[dict[str, Any]]] = []
        async with conn.cursor() as cur:
            cur.adapters.register_dumper(EncodedJson, _EncodedJsonDumper)
            for name, sql in self._sql:
                batch = getattr(rows, name)
                if batch and self._written is not None and name in _COPIED:
                    batch = self._unwritten(batch)
                    copied.append(batch)
                    table, columns = _COPIED[name]
                    statement = f"COPY {self._prefix}{table} ({', '.join(columns)}) FROM STDIN"
                    async with cur.copy(statement) as copy:
                        for row in batch:
                            await copy.write_row([row[c] for c in columns])
                elif batch:
                    await cur.executemany(sql, batch)
                APPLIED.labels(name).inc(len(batch))
        if self._written is not None:  # only once every statement of the batch succeeded
            for batch in copied:
                self._written.update(row["event_id"] for row in batch)

    def _unwritten(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        assert self._written is not None
        out, ids = [], set()
        for row in batch:
            event_id = row["event_id"]
            if event_id not in self._written and event_id not in ids:
                ids.add(event_id)
                out.append(row)
        return out

    async def _dead(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        self.refused += 1
        if self.producer is None:
            return
        DEAD.inc()
        logical = record.topic.removeprefix(self.producer.prefix)
        await publish_to_dlq(self.producer, f"{logical}-dlq", record, reason)
