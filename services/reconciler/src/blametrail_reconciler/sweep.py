"""One sweep of one connection: compare, publish what disagrees, record what was repaired.

1. The incidents of Sentry origin the read model shows open, acknowledged or muted (and those
   resolved within ``resolved_window_s``: a missed ``issue.unresolved`` reopens one), read
   ``page`` at a time (the sweep's memory is bounded by that, not by the open incidents), in
   batches of 100: one issue search by id list each (``issue.id:[...]``, no status term).
2. An issue the search does not return was merged (or deleted): one detail call; an answer for
   another id is a merge. A 404 is a deletion: recorded once (a ``deleted`` row of
   ``reconcile_repairs``, not a repair: no webhook was lost) and the incident is not swept
   again, so a deleted issue costs one detail call, not one on every sweep. Its incident is
   left as it is (Sentry sends no webhook for a deletion; a person closes it).
3. Missed creations (connections whose app sends issue webhooks, see
   :meth:`Store.sends_issue_webhooks`): issues first seen since the last successful sweep, less
   ``overlap_s``, in mapped active projects, with no incident.
4. Every disagreement is published (merges: the alias first) and acked by the broker; then the
   sweep and its repairs are recorded. Before each publish the lock's connection is asked
   ``SELECT 1``: a lock lost with its connection stops the sweep (:class:`LockLost`, recorded
   failed on a new connection) before another replica's sweep and this one both publish. A crash in between is harmless: the next sweep sees the
   same disagreement (or, once folded, none) and the fold is idempotent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from blametrail_common.events import ConnectionStateV1, new_event
from blametrail_common.events.incidents import incident_id_for
from blametrail_common.events.observations import (
    IssueAliasV1,
    IssueObservedV1,
    alias_key,
    bounded_issue,
)
from blametrail_common.kafka import EventProducer
from blametrail_common.sentry_api import HttpxSentryApi, NotFound, SentryCredentials
from prometheus_client import Counter, Gauge

from blametrail_reconciler import plan
from blametrail_reconciler.plan import Decision, Tracked
from blametrail_reconciler.settings import ReconcilerSettings
from blametrail_reconciler.store import LockLost, Repair, Store, SweepRow

__all__ = ["LockLost", "Progress", "Sweeper"]

log = logging.getLogger(__name__)
REPAIRS = Counter(
    "blametrail_reconcile_repairs_total", "What sweeps repaired (webhooks lost)", ["kind"]
)
SWEEPS = Counter("blametrail_reconcile_sweeps_total", "Sweeps by outcome", ["outcome"])
API_CALLS = Counter("blametrail_reconcile_api_calls_total", "Sentry API calls made by sweeps")
DELETED = Counter(
    "blametrail_reconcile_deleted_issues_total",
    "Issues found deleted in Sentry (recorded once, no longer swept)",
)
LAST_SUCCESS = Gauge(
    "blametrail_reconcile_last_success_timestamp_seconds", "When the last successful sweep began"
)

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: the CLI's bars."""


@dataclass
class Sweeper:
    api: HttpxSentryApi
    producer: EventProducer
    dsn: str
    settings: ReconcilerSettings
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    async def sweep(
        self,
        conn: ConnectionStateV1,
        creds: SentryCredentials,
        progress: Progress | None = None,
    ) -> SweepRow | None:
        """One sweep, or None if another replica is sweeping this connection right now."""
        async with Store.open(self.dsn) as store:
            if not await store.try_lock(conn.connection_id):
                log.info(
                    "sweep skipped: another replica holds the connection",
                    extra={"connection_id": conn.connection_id},
                )
                return None
            try:
                return await self._sweep(store, conn, creds, progress or (lambda *_: None))
            finally:
                if store.usable:  # a lost connection took its lock with it
                    await store.unlock(conn.connection_id)

    async def _sweep(
        self, store: Store, conn: ConnectionStateV1, creds: SentryCredentials, progress: Progress
    ) -> SweepRow:
        now = self.clock()
        s = self.settings
        row = SweepRow(uuid.uuid4(), conn.connection_id, conn.tenant_id, now)
        calls = [0]

        async def call(path: str, headers: dict[str, str] | None = None) -> Any:
            calls[0] += 1
            API_CALLS.inc()
            return await self.api.call("GET", creds, path, headers_out=headers)

        try:
            resolved_since = now - timedelta(seconds=s.resolved_window_s)
            total = await store.tracked_count(conn.tenant_id, conn.connection_id, resolved_since)
            progress("compare", 0, total)
            decisions: list[Decision] = []
            async for page in store.tracked(
                conn.tenant_id, conn.connection_id, resolved_since, s.page
            ):
                before = row.checked

                def compared(n: int, before: int = before) -> None:
                    progress("compare", before + n, max(before + n, total))

                found, deleted = await self._compare(page, creds, call, now, compared)
                decisions += found
                row.deleted += deleted
                row.checked += len(page)
            if s.creations == "always" or (
                s.creations == "auto"
                and await store.sends_issue_webhooks(conn.tenant_id, conn.connection_id)
            ):
                since = plan.creations_since(
                    await store.last_success(conn.connection_id),
                    now,
                    overlap=timedelta(seconds=s.overlap_s),
                    settle=timedelta(seconds=s.settle_s),
                    first_lookback=timedelta(seconds=s.first_lookback_s),
                )
                row.created_since = since
                decisions += await self._creations(store, conn, creds, call, since, progress)
            await self._publish(store, conn, row, decisions, now, progress)
        except Exception as exc:
            row.outcome, row.error = "failed", f"{type(exc).__name__}: {exc}"
            row.api_calls, row.finished_at = calls[0], self.clock()
            SWEEPS.labels("failed").inc()
            await self._record(store, row)
            raise
        row.api_calls, row.finished_at = calls[0], self.clock()
        await self._record(store, row)
        SWEEPS.labels("ok").inc()
        LAST_SUCCESS.set(now.timestamp())
        counts = row.counts()
        for kind, n in counts.items():
            REPAIRS.labels(kind).inc(n)
        DELETED.inc(len(row.deleted))
        extra = {
            "connection_id": conn.connection_id,
            "sweep_id": str(row.sweep_id),
            "checked": row.checked,
            "api_calls": row.api_calls,
            "repairs": counts,
            "deleted_in_sentry": len(row.deleted),
        }
        if counts:
            log.warning("sweep repaired what webhooks missed", extra=extra)
        else:
            log.info("sweep found nothing to repair", extra=extra)
        return row

    async def _record(self, store: Store, row: SweepRow) -> None:
        if store.usable:
            await store.record(row)
        else:  # the lock's connection is gone: the sweep is recorded on a new one
            async with Store.open(self.dsn) as fresh:
                await fresh.record(row)

    async def _compare(
        self,
        tracked: list[Tracked],
        creds: SentryCredentials,
        call: Callable[..., Any],
        now: datetime,
        compared: Callable[[int], None],
    ) -> tuple[list[Decision], list[Repair]]:
        """The decisions, and the issues Sentry says are deleted (404 on the detail), for one
        page of ``tracked`` incidents; ``compared(n)`` as the first ``n`` of them are done."""
        settle = timedelta(seconds=self.settings.settle_s)
        gate = asyncio.Semaphore(self.settings.concurrency)
        done = [0]
        deleted: list[Repair] = []

        async def one(batch: list[Tracked]) -> list[Decision]:
            async with gate:
                found = await call(plan.id_search_path(creds.org_slug, (t.issue_id for t in batch)))
                at = self.clock()  # when Sentry answered: the observations' time
                by_id = {str(i.get("id")): i for i in found if isinstance(i, dict)}
                decisions, missing = plan.compare(batch, by_id, now=at, settle=settle)
                for item in missing:  # merged or deleted: the detail endpoint says which
                    try:
                        issue = await call(
                            f"/api/0/organizations/{creds.org_slug}/issues/{item.issue_id}/"
                        )
                    except NotFound:  # deleted in Sentry: recorded, never asked about again
                        deleted.append(
                            Repair(
                                "deleted",
                                item.issue_id,
                                item.incident.incident_id,
                                {"note": "deleted in Sentry (404 on the issue's detail)"},
                                self.clock(),
                            )
                        )
                        continue
                    if isinstance(issue, dict):
                        d = plan.decide_status(item, issue, now=self.clock(), settle=settle)
                        if d is not None:
                            decisions.append(d)
            done[0] += len(batch)
            compared(done[0])
            return decisions

        results = await asyncio.gather(*(one(b) for b in plan.batches(tracked)))
        return [d for r in results for d in r], deleted

    async def _creations(
        self,
        store: Store,
        conn: ConnectionStateV1,
        creds: SentryCredentials,
        call: Callable[..., Any],
        since: datetime,
        progress: Progress,
    ) -> list[Decision]:
        slugs = await store.mapped_slugs(conn.connection_id)
        if not slugs:
            return []
        issues: list[dict[str, Any]] = []
        fetched: dict[str, datetime] = {}
        cursor: str | None = None
        pages = 0
        while True:
            headers: dict[str, str] = {}
            page = await call(plan.creations_path(creds.org_slug, since, cursor), headers)
            at = self.clock()
            for i in page:
                if isinstance(i, dict):
                    issues.append(i)
                    fetched.setdefault(str(i.get("id")), at)
            pages += 1
            progress("creations", pages, pages)
            cursor = plan.next_cursor(headers.get("link"))
            if cursor is None or not page:
                break
        ids = {
            str(i.get("id")): incident_id_for(conn.tenant_id, "issue", str(i.get("id")))
            for i in issues
        }
        known = await store.existing(list(ids.values()))
        decided = plan.decide_created(
            issues,
            known,
            slugs,
            lambda issue_id: ids[issue_id],
            now=self.clock(),
            settle=timedelta(seconds=self.settings.settle_s),
        )
        return [dataclasses.replace(d, observed_at=fetched.get(d.asked_issue_id)) for d in decided]

    async def _publish(
        self,
        store: Store,
        conn: ConnectionStateV1,
        row: SweepRow,
        decisions: list[Decision],
        now: datetime,
        progress: Progress,
    ) -> None:
        progress("publish", 0, len(decisions))
        if decisions:  # idle while Sentry was asked: is the lock still ours?
            await store.ensure_locked(conn.connection_id)
        primaries = [
            incident_id_for(conn.tenant_id, "issue", str(d.issue.get("id")))
            for d in decisions
            if d.kind == "merged"
        ]
        known = await store.existing(primaries)
        ids = {id(d): plan.observation_id(conn.connection_id, d) for d in decisions}
        published = await store.published([(_incident_of(conn, d), ids[id(d)]) for d in decisions])
        out: list[tuple[str, Any]] = []
        for d in decisions:
            event_id = ids[id(d)]
            if event_id in published:  # an earlier sweep published and recorded it: not again
                continue
            observed = d.observed_at or now
            key = alias_key(conn.connection_id, d.asked_issue_id)
            primary_id = str(d.issue.get("id") or "")
            moved = []
            if d.kind == "merged" and d.incident is not None:
                moved = await store.links(d.incident.incident_id)
                alias = IssueAliasV1(
                    connection_id=conn.connection_id,
                    tenant_id=conn.tenant_id,
                    issue_id=d.asked_issue_id,
                    primary_issue_id=primary_id,
                    merged_at=observed,
                )
                alias_id = uuid.uuid5(event_id, "alias")
                out.append(
                    (
                        "sentry-issue-aliases",
                        new_event(
                            alias,
                            key=key,
                            tenant=conn.tenant_id,
                            occurred_at=observed,
                            event_id=alias_id,
                        ),
                    )
                )
            obs = IssueObservedV1(
                connection_id=conn.connection_id,
                tenant_id=conn.tenant_id,
                kind=d.kind,
                asked_issue_id=d.asked_issue_id,
                issue=bounded_issue(d.issue),
                observed_at=observed,
                sweep_id=str(row.sweep_id),
                incident=d.incident,
                primary_known=incident_id_for(conn.tenant_id, "issue", primary_id) in known,
                moved_links=moved,
            )
            out.append(
                (
                    "sentry-observations",
                    new_event(
                        obs, key=key, tenant=conn.tenant_id, occurred_at=observed, event_id=event_id
                    ),
                )
            )
            row.repairs.append(
                Repair(
                    d.repair,
                    d.asked_issue_id,
                    _incident_of(conn, d),
                    {
                        "status": d.issue.get("status"),
                        "observation_id": str(event_id),
                        **({"primary_issue_id": primary_id} if d.kind == "merged" else {}),
                    },
                    observed,
                )
            )
        for at in range(0, len(out), 500):  # acked by the broker before the sweep is recorded
            await store.ensure_locked(conn.connection_id)
            await self.producer.send_many(out[at : at + 500])
            progress("publish", min(at + 500, len(out)), len(out))


def _incident_of(conn: ConnectionStateV1, d: Decision) -> str:
    """The incident a decision is about (a missed creation's: the one it makes)."""
    if d.incident is not None:
        return d.incident.incident_id
    return incident_id_for(conn.tenant_id, "issue", d.asked_issue_id)
