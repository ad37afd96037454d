"""Background jobs the control plane records and a worker runs (``jobs``, migration 0025).

The API only records: :meth:`JobStore.reprocess_ignored` inserts a queued job and wakes the
workers (``NOTIFY blametrail_jobs``, sent when the transaction commits); the replay package's
worker (:mod:`blametrail_replay.worker`) claims and runs it. At most one live (queued or running)
job per subject: a second is a :class:`~blametrail_mappings_api.errors.Conflict` naming the first.
"""

from __future__ import annotations

import uuid

import psycopg
from psycopg.types.json import Jsonb

from blametrail_mappings_api.errors import Conflict, NotFound
from blametrail_mappings_api.store import db
from blametrail_mappings_api.store.db import Pool, Row

__all__ = ["CHANNEL", "JobStore", "reprocess_subject"]

CHANNEL = "blametrail_jobs"
_COLUMNS = (
    "job_id, kind, state, total, processed, republished, still_ignored, error, attempt, params,"
    " created_at, started_at, finished_at"
)


def reprocess_subject(connection_id: str, project_slug: str) -> str:
    """What a reprocess job works on: one live job per connection and project."""
    return f"reprocess_ignored:{connection_id}:{project_slug}"


class JobStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def reprocess_ignored(
        self, org: str, connection_id: str, project_slug: str, created_by: str
    ) -> Row:
        """Queue a reprocessing of ``project_slug``'s ignored webhooks on ``org``'s connection
        ``connection_id``; :class:`NotFound` for another organization's (or no) connection,
        :class:`Conflict` while a job for the same project is queued or running."""
        try:  # one spelling of the id, so that one live job per subject holds for every spelling
            connection_id = str(uuid.UUID(connection_id))
        except ValueError:
            raise NotFound("connection") from None
        job_id = uuid.uuid4()
        subject = reprocess_subject(connection_id, project_slug)
        params = {"connection_id": connection_id, "project_slug": project_slug}
        async with db.transaction(self.pool) as conn:
            await db.get_in(conn, "sentry_connections", org, connection_id, "connection")
            try:
                async with conn.transaction():
                    cur = await conn.execute(
                        f"INSERT INTO jobs (job_id, tenant_id, kind, params, subject, created_by)"  # noqa: S608
                        f" VALUES (%s, %s, 'reprocess_ignored', %s, %s, %s) RETURNING {_COLUMNS}",
                        (job_id, org, Jsonb(params), subject, created_by),
                    )
            except psycopg.errors.UniqueViolation:
                raise await _live_conflict(conn, subject, project_slug) from None
            await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(job_id)))
            row = await cur.fetchone()
        assert row is not None
        return row

    async def get(self, org: str, job_id: str) -> Row:
        """``org``'s job ``job_id``; :class:`NotFound` otherwise (another organization's too)."""
        async with self.pool.connection() as conn:
            row: Row | None = await (
                await conn.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE tenant_id = %s AND job_id = %s",  # noqa: S608
                    (org, db.uuid_or_404(job_id, "job")),
                )
            ).fetchone()
        if row is None:
            raise NotFound("job")
        return row


async def _live_conflict(conn: db.Conn, subject: str, project_slug: str) -> Conflict:
    row = await (
        await conn.execute(
            "SELECT job_id, state, created_at FROM jobs"
            " WHERE subject = %s AND state IN ('queued', 'running')",
            (subject,),
        )
    ).fetchone()
    existing = None if row is None else {k: str(v) for k, v in row.items()}
    state = "queued or running" if row is None else row["state"]
    return Conflict(
        f"a job for the ignored webhooks of {project_slug} is {state}"
        + ("" if row is None else f": {row['job_id']}"),
        existing,
    )
