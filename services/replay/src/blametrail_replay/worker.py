"""The jobs worker (``blametrail-replay-jobs``, or ``python -m blametrail_replay.worker``).

Runs the jobs the control plane records (``POST /api/v1/audit/reprocess`` -> ``jobs``): it
claims one (:mod:`blametrail_replay.jobs`), runs it with the same code as
``blametrail replay reprocess-ignored`` (:func:`~blametrail_replay.reprocess.reprocess_ignored`),
writes heartbeat and progress every ``heartbeat_s`` and finishes with the counts. It sleeps on
``LISTEN blametrail_jobs`` (the API's NOTIFY wakes it) with a poll as fallback.

A job whose worker died (no heartbeat for ``stale_after_s``) is taken over and **run again
from the start**. That is safe because reprocessing is idempotent: every event it publishes has
an id derived from the raw webhook's id (``uuid5(raw.id, ...)`` in the normalizer's
:func:`~blametrail_normalizer.normalize.normalize`) and incident ids from the Sentry issue, so
a second run publishes the same events again and the projection, keyed by those ids, writes
nothing twice. A job that killed its worker ``max_attempts`` times is failed with that reason.

Outcomes: ``done`` with the counts; ``failed`` with a reason a person can act on (the project
has no active mapping; an unknown job kind; the error of a bug). A dependency that went away
mid-run (Kafka, Postgres) is not the job's fault: the job goes back to the queue and the
supervised loop backs off and retries. SIGTERM releases the job in hand the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import psycopg
from blametrail_common.gctune import tune_gc
from blametrail_common.kafka.admin import admin_client
from blametrail_common.logging import configure_logging
from blametrail_common.resilience import (
    DEPENDENCIES,
    KAFKA,
    POSTGRES,
    dependency_of,
    supervise,
)
from blametrail_common.runner import run_with_health
from blametrail_common.settings import KafkaSettings, PostgresSettings
from blametrail_normalizer.tables import TableLookup
from prometheus_client import Counter, Gauge

from blametrail_replay.jobs import CHANNEL, Job, JobStore, Lost, worker_name
from blametrail_replay.reprocess import ReprocessSummary, reprocess_ignored
from blametrail_replay.worker_settings import JobWorkerSettings

__all__ = ["JobRefused", "Worker", "main", "mapping_ready"]

log = logging.getLogger(__name__)

JOBS = Counter("blametrail_jobs_total", "Jobs ended by this worker", ["kind", "outcome"])
RUNNING = Gauge("blametrail_jobs_running", "Jobs this worker is running now")


class JobRefused(Exception):
    """The job cannot be done as asked (the message says why); it is failed, not retried."""


def mapping_ready(
    connection_id: str, project_slug: str, wait_s: float
) -> Callable[[TableLookup], Awaitable[None]]:
    """Wait (up to ``wait_s``) until the pipeline's tables show an active mapping of
    ``project_slug``; :class:`JobRefused` naming it otherwise."""

    async def before(lookup: TableLookup) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            found = lookup.mapping(connection_id, project_slug)
            if found is not None and found.active:
                return
            if time.monotonic() >= deadline:
                state = "is inactive" if found is not None else "has no mapping"
                raise JobRefused(
                    f"project {project_slug} {state} on connection {connection_id}: map it"
                    " (or enable its mapping) first; nothing was processed"
                )
            await asyncio.sleep(0.2)

    return before


class _Progress:
    def __init__(self) -> None:
        self.read = 0
        self.total: int | None = None

    def report(self, read: int, total: int) -> None:
        self.read, self.total = read, total


class Worker:
    """Claims and runs jobs until ``stop``; one job at a time."""

    def __init__(self, settings: JobWorkerSettings, kafka: KafkaSettings, dsn: str) -> None:
        self.settings, self.kafka, self.dsn = settings, kafka, dsn
        self.name = worker_name()

    async def run(self, stop: asyncio.Event) -> None:
        """One supervised attempt: a connection, LISTEN, then claim and run until ``stop``."""
        s = self.settings
        async with await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, connect_timeout=10
        ) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            DEPENDENCIES.up(POSTGRES)
            store = JobStore(conn, self.name, s.stale_after_s, s.max_attempts)
            while not stop.is_set():
                for row in await store.give_up_stale():
                    JOBS.labels("reprocess_ignored", "failed").inc()
                    log.warning("job given up: its worker died on every attempt", extra=row)
                claimed = await store.claim()
                if claimed is None:
                    await self._sleep(conn, stop)
                    continue
                job, taken_over = claimed
                if taken_over:
                    log.warning(
                        "job taken over from a worker that stopped; running it again",
                        extra={"job_id": str(job.job_id), "attempt": job.attempt},
                    )
                await self._run_claimed(store, job, stop)

    async def _sleep(self, conn: psycopg.AsyncConnection[object], stop: asyncio.Event) -> None:
        deadline = time.monotonic() + self.settings.poll_s
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            async for _ in conn.notifies(timeout=min(left, 1.0), stop_after=1):
                return

    async def _run_claimed(self, store: JobStore, job: Job, stop: asyncio.Event) -> None:
        progress = _Progress()
        log.info("job started", extra={"job_id": str(job.job_id), "attempt": job.attempt})
        RUNNING.inc()
        work = asyncio.create_task(self._execute(job, progress))
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=self.settings.heartbeat_s)
                if stop.is_set() and not work.done():
                    await _cancel(work)
                    await store.release(job)
                    log.info("stopping: job released", extra={"job_id": str(job.job_id)})
                    return
                if not work.done():
                    await store.beat(job, progress.read, progress.total)
            await self._conclude(store, job, work)
        except Lost as exc:
            await _cancel(work)
            JOBS.labels(job.kind, "lost").inc()
            log.warning("job lost to another worker; stopped it here", extra={"why": str(exc)})
        finally:
            RUNNING.dec()
            await _cancel(work)

    async def _conclude(
        self, store: JobStore, job: Job, work: asyncio.Task[ReprocessSummary]
    ) -> None:
        jid = {"job_id": str(job.job_id)}
        try:
            s = work.result()
        except JobRefused as exc:
            await store.fail(job, str(exc))
            JOBS.labels(job.kind, "refused").inc()
            log.warning("job refused", extra={**jid, "why": str(exc)})
            return
        except Exception as exc:
            if dependency_of(exc) is not None:
                with contextlib.suppress(psycopg.Error):
                    await store.release(job)
                raise  # supervised: backed off, the dependency marked down, retried
            await store.fail(job, f"{type(exc).__name__}: {exc}")
            JOBS.labels(job.kind, "failed").inc()
            log.exception("job failed", extra=jid)
            return
        await store.finish(job, s.read, s.selected - s.still_ignored, s.still_ignored)
        DEPENDENCIES.up(KAFKA)
        JOBS.labels(job.kind, "done").inc()
        log.info(
            "job done",
            extra={**jid, "read": s.read, "republished": s.selected - s.still_ignored},
        )

    async def _execute(self, job: Job, progress: _Progress) -> ReprocessSummary:
        if job.kind != "reprocess_ignored":
            raise JobRefused(f"this worker does not know jobs of kind {job.kind!r}")
        conn_id, slug = job.params["connection_id"], job.params["project_slug"]
        before = mapping_ready(conn_id, slug, self.settings.mapping_wait_s)
        return await reprocess_ignored(
            self.kafka, slug, conn_id, report=progress.report, before=before
        )


async def _cancel(task: asyncio.Task[ReprocessSummary]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(BaseException):
        await task


async def _kafka_answers(kafka: KafkaSettings) -> None:
    admin = admin_client(kafka)
    await admin.start()
    try:
        await admin.list_topics()
    finally:
        await admin.close()
    DEPENDENCIES.up(KAFKA)


async def serve() -> None:
    settings, kafka = JobWorkerSettings(), KafkaSettings()
    worker = Worker(settings, kafka, PostgresSettings().database_url)

    async def prepare(_: asyncio.Event) -> None:
        await _kafka_answers(kafka)

    async def loop(stop: asyncio.Event) -> None:
        await supervise("jobs-start", prepare, stop)
        await supervise("jobs", worker.run, stop)

    checks = {"postgres": DEPENDENCIES.check(POSTGRES), "kafka": DEPENDENCIES.check(KAFKA)}
    await run_with_health(settings.host, settings.port, checks, loop)


def main() -> None:
    configure_logging("replay-jobs")
    tune_gc()
    asyncio.run(serve())


if __name__ == "__main__":
    main()
