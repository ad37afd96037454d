"""The worker's side of the ``jobs`` table (migration 0025; the control plane inserts the rows).

A worker claims the oldest claimable job with ``FOR UPDATE SKIP LOCKED`` (two workers never
take the same row): a queued one, or a running one whose heartbeat is older than
``stale_after_s`` (its worker died: it is taken over and run again from the start). Every claim
increments ``attempt``, and every later write names the attempt it belongs to, so a worker that
lost its job (paused past the stale limit, then resumed) writes nothing more: :class:`Lost`.
A stale job already tried ``max_attempts`` times is failed with the reason instead of retried.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

__all__ = ["CHANNEL", "Job", "JobStore", "Lost", "worker_name"]

CHANNEL = "blametrail_jobs"  # as the control plane's store NOTIFYs
Conn = psycopg.AsyncConnection[Any]


class Lost(Exception):
    """The job is no longer this attempt's (another worker took it over, or it was failed)."""


@dataclass(frozen=True)
class Job:
    job_id: UUID
    kind: str
    params: dict[str, str]
    attempt: int


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


_GIVE_UP = """
UPDATE jobs SET state = 'failed', finished_at = now(),
       error = format('the worker running it stopped (no heartbeat since %%s) on each of %%s'
                      ' attempts; not tried again', heartbeat_at, attempt)
 WHERE state = 'running' AND heartbeat_at < now() - make_interval(secs => %(stale)s)
   AND attempt >= %(max)s
RETURNING job_id, worker, attempt
"""

_CLAIM = """
UPDATE jobs SET state = 'running', attempt = attempt + 1, worker = %(worker)s,
       started_at = now(), heartbeat_at = now(), total = NULL, processed = 0,
       republished = 0, still_ignored = 0, error = NULL
 WHERE job_id = (
       SELECT job_id FROM jobs
        WHERE state = 'queued'
           OR (state = 'running' AND heartbeat_at < now() - make_interval(secs => %(stale)s))
        ORDER BY created_at
        LIMIT 1
        FOR UPDATE SKIP LOCKED)
RETURNING job_id, kind, params, attempt, (attempt > 1) AS taken_over
"""


class JobStore:
    """Claims and writes over one autocommit connection (each statement its own transaction)."""

    def __init__(self, conn: Conn, worker: str, stale_after_s: float, max_attempts: int) -> None:
        self.conn, self.worker = conn, worker
        self.stale_after_s, self.max_attempts = stale_after_s, max_attempts

    async def give_up_stale(self) -> list[dict[str, Any]]:
        """Fail the stale jobs that used their attempts; the rows failed."""
        cur = self.conn.cursor(row_factory=dict_row)
        await cur.execute(_GIVE_UP, {"stale": self.stale_after_s, "max": self.max_attempts})
        return await cur.fetchall()

    async def claim(self) -> tuple[Job, bool] | None:
        """The next job, now this worker's (and whether it was taken over from a dead one)."""
        cur = self.conn.cursor(row_factory=dict_row)
        await cur.execute(_CLAIM, {"worker": self.worker, "stale": self.stale_after_s})
        row = await cur.fetchone()
        if row is None:
            return None
        job = Job(row["job_id"], row["kind"], dict(row["params"]), row["attempt"])
        return job, bool(row["taken_over"])

    async def beat(self, job: Job, processed: int, total: int | None) -> None:
        """Heartbeat and progress; :class:`Lost` when the job is not this attempt's any more."""
        await self._mine(
            job,
            "heartbeat_at = now(), processed = %(processed)s, total = %(total)s",
            processed=processed,
            total=total,
        )

    async def finish(self, job: Job, total: int, republished: int, still_ignored: int) -> None:
        await self._mine(
            job,
            "state = 'done', finished_at = now(), heartbeat_at = now(), total = %(total)s,"
            " processed = %(total)s, republished = %(republished)s, still_ignored = %(still)s",
            total=total,
            republished=republished,
            still=still_ignored,
        )

    async def fail(self, job: Job, error: str) -> None:
        await self._mine(
            job,
            "state = 'failed', finished_at = now(), error = %(error)s",
            error=error[:2000],
        )

    async def release(self, job: Job) -> None:
        """Back to the queue, this attempt not counted (a dependency went away mid-run)."""
        await self._mine(
            job,
            "state = 'queued', attempt = attempt - 1, heartbeat_at = NULL, worker = NULL",
        )

    async def _mine(self, job: Job, sets: str, **values: Any) -> None:
        """``UPDATE jobs SET sets`` of this attempt's running job (``sets`` is ours, values go as
        parameters)."""
        sql = f"UPDATE jobs SET {sets} WHERE job_id = %(job_id)s AND attempt = %(attempt)s AND state = 'running'"  # noqa: S608
        cur = await self.conn.execute(
            sql.encode(), {"job_id": job.job_id, "attempt": job.attempt, **values}
        )
        if cur.rowcount != 1:
            raise Lost(f"job {job.job_id} attempt {job.attempt} is no longer this worker's")
