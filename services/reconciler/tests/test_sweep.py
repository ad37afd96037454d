"""Sweeps on real Kafka and Postgres against the Sentry stand-in (issue 18 §3-4 tests)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from blametrail_devstack.testkit import until
from blametrail_reconciler.store import Store

ORG = "acme"


async def _status(p: Any, issue_id: str) -> str | None:
    rows = await p.rows(
        "SELECT status FROM incidents WHERE incident_id = %s::uuid", p.incident_of(issue_id)
    )
    return rows[0][0] if rows else None


async def _timeline(p: Any, issue_id: str) -> list[str]:
    rows = await p.rows(
        "SELECT event_type FROM incident_timeline WHERE incident_id = %s::uuid"
        " ORDER BY occurred_at, log_partition, log_offset",
        p.incident_of(issue_id),
    )
    return [r[0] for r in rows]


async def test_a_resolution_behind_our_back_is_repaired_once(make_pipeline: Any) -> None:
    async with make_pipeline() as p:
        await p.open_issues(["9100001", "9100002"])
        p.stub.issue_store.set_status(
            ORG, "9100001", "resolved", status_details={"inRelease": "1.2"}
        )
        first = await p.sweep()
        assert first.counts() == {"resolved": 1}
        assert first.checked == 2
        assert first.api_calls == 2  # one id search for both, one search for missed creations
        await until("resolved", lambda: _eq(_status(p, "9100001"), "resolved"), timeout_s=60)
        assert await _status(p, "9100002") == "open"
        assert await _timeline(p, "9100001") == ["incident.opened", "incident.resolved"]
        # the second sweep changes nothing: no repairs, no events, no timeline rows
        observed = await _observations(p)
        second = await p.sweep()
        assert second.counts() == {}
        await asyncio.sleep(1)  # anything it published would have had time to land
        assert await _observations(p) == observed
        assert await _timeline(p, "9100001") == ["incident.opened", "incident.resolved"]
        # a missed issue.unresolved reopens it (a resolved incident stays swept for a while)
        p.stub.issue_store.set_status(ORG, "9100001", "unresolved")
        assert (await p.sweep()).counts() == {"reopened": 1}
        await until("reopened", lambda: _eq(_status(p, "9100001"), "open"), timeout_s=60)
        (sweeps,) = await p.rows(
            "SELECT count(*), sum((repairs ->> 'resolved')::int) FROM reconcile_sweeps"
            " WHERE connection_id = %s AND outcome = 'ok'",
            p.connection_id,
        )
        assert sweeps == (3, 1)


async def test_an_issue_created_behind_our_back_gets_one_enriched_incident(
    make_pipeline: Any,
) -> None:
    async with make_pipeline(enrich=True) as p:
        await p.open_issues(["9200001"])  # the connection sends issue webhooks: it had one
        p.stub.issue_store.create(ORG, "checkout-api", issue_id="9200002")
        p.stub.issue_store.create(ORG, "unmapped-project", issue_id="9200003")
        row = await p.sweep()
        assert row.counts() == {"created": 1}
        await until(
            "enriched",
            lambda: _has(p, "incident_enrichments", "9200002", "status = 'enriched'"),
            timeout_s=90,
        )
        assert await _timeline(p, "9200002") == ["incident.opened"]
        assert await _status(p, "9200003") is None
        again = await p.sweep()  # overlapping window: still exactly one incident
        assert again.counts() == {}
        assert await p.count("incidents", [p.incident_of("9200002")]) == 1


async def test_creations_are_not_searched_for_a_connection_without_issue_webhooks(
    make_pipeline: Any,
) -> None:
    async with make_pipeline() as p:
        p.stub.issue_store.create(ORG, "checkout-api", issue_id="9300001")
        row = await p.sweep()
        assert row.counts() == {}
        assert row.created_since is None
        assert row.api_calls == 0


async def test_a_merge_closes_the_old_incident_into_the_primary(make_pipeline: Any) -> None:
    async with make_pipeline() as p:
        await p.open_issues(["9400001", "9400002"])
        p.stub.issue_store.merge(ORG, ["9400001"], "9400002")
        row = await p.sweep()
        assert row.counts() == {"merged": 1}
        # the id search, the detail of the one it did not find, the creations search
        assert row.api_calls == 3
        await until("merged", lambda: _eq(_status(p, "9400001"), "resolved"), timeout_s=60)
        assert await _timeline(p, "9400001") == ["incident.opened", "incident.merged"]
        await until(
            "absorbed",
            lambda: _eq(_last(p, "9400002"), "incident.absorbed"),
            timeout_s=60,
        )
        ((payload,),) = await p.rows(
            "SELECT payload FROM incident_timeline WHERE incident_id = %s::uuid"
            " AND event_type = 'incident.merged'",
            p.incident_of("9400001"),
        )
        assert payload["into_incident_id"] == p.incident_of("9400002")
        # later news about the old id lands on the primary (the alias), and the merged-away
        # incident is not swept again
        p.stub.issue_store.set_status(ORG, "9400002", "resolved")
        old = {**p.stub.issue_store.get(ORG, "9400002"), "id": "9400001"}
        await until("alias known", lambda: _alias(p, "9400001", "9400002"), timeout_s=30)
        later = row.repairs[0].observed_at + timedelta(seconds=1)
        await p.webhook("resolved", old, at=later)
        await until("primary resolved", lambda: _eq(_status(p, "9400002"), "resolved"), 60)
        assert await _timeline(p, "9400001") == ["incident.opened", "incident.merged"]
        assert (await p.sweep()).counts() == {}


async def test_a_429_storm_during_a_sweep_of_2000_incidents(make_pipeline: Any) -> None:
    # read from Postgres 500 at a time: the sweep holds a page, not every open incident
    async with make_pipeline(page=500) as p:
        ids = [str(9_500_000 + n) for n in range(2000)]
        await p.open_issues(ids)
        changed = ids[::7]  # 286 resolved behind our back
        for issue_id in changed:
            p.stub.issue_store.set_status(ORG, issue_id, "resolved")
        p.stub.storm("429", duration_s=4, route="issue_search")
        began = time.monotonic()
        row = await p.sweep()
        took = time.monotonic() - began
        assert took >= 3  # it could only finish after the storm
        assert row.checked == 2000
        assert row.counts() == {"resolved": len(changed)}
        searches = [r for r in p.stub.requests if r["route"] == "issue_search"]
        # within the budget: held until each Reset (one second), never a retry loop; 20 calls
        # that count, plus at most one refused call per held caller per second of storm
        # 20 id searches, and the creations search over the 2000 issues first seen within the
        # first sweep's lookback: 20 pages of 100
        assert row.api_calls == 40
        assert len(searches) <= row.api_calls + 4 * 6 * 2
        await until(
            "all resolved",
            lambda: _ge(
                p.count("incidents", [p.incident_of(i) for i in changed], "status = 'resolved'"),
                len(changed),
            ),
            timeout_s=180,
        )
        # nothing duplicated: one resolve per changed incident, none elsewhere
        resolves = await p.count(
            "incident_timeline",
            [p.incident_of(i) for i in ids],
            "event_type = 'incident.resolved'",
        )
        assert resolves == len(changed)
        # the pages: in id order, each after the last, together every tracked incident once
        since = datetime.now(UTC) - timedelta(days=7)
        async with Store.open(p.dsn) as store:
            pages = [
                [t.incident.incident_id for t in page]
                async for page in store.tracked(p.tenant_id, p.connection_id, since, 300)
            ]
            assert await store.tracked_count(p.tenant_id, p.connection_id, since) == 2000
        assert [len(page) for page in pages] == [300] * 6 + [200]
        flat = [i for page in pages for i in page]
        assert flat == sorted(flat, key=uuid.UUID)
        assert set(flat) == {p.incident_of(i) for i in ids}


async def _eq(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _ge(value: Any, expected: int) -> bool:
    return bool(await value >= expected)


async def _has(p: Any, table: str, issue_id: str, where: str) -> bool:
    return bool(await p.count(table, [p.incident_of(issue_id)], where))


async def _last(p: Any, issue_id: str) -> str | None:
    timeline = await _timeline(p, issue_id)
    return timeline[-1] if timeline else None


async def _observations(p: Any) -> int:
    rows = await p.rows("SELECT count(*) FROM incident_timeline")
    return int(rows[0][0])


async def _alias(p: Any, merged: str, primary: str) -> bool:
    return bool(p.normalizer.lookup.primary_issue(p.connection_id, merged) == primary)


async def test_a_blametrail_resolve_not_written_back_stands(make_pipeline: Any) -> None:
    """Write-back off: Sentry never heard of the resolve, still shows the issue unresolved as it
    last reported, and the sweep leaves the BlameTrail action standing (issue 18 §2)."""
    async with make_pipeline() as p:
        await p.open_issues(["9600001"])
        await p.set_writeback(False)
        await p.act("9600001", "resolve")
        assert await _status(p, "9600001") == "resolved"
        assert p.stub.issue_store.get(ORG, "9600001")["status"] == "unresolved"
        row = await p.sweep()
        assert row.counts() == {}
        assert row.checked == 1
        observed = await _observations(p)
        await asyncio.sleep(1)  # anything it published would have had time to land
        assert await _observations(p) == observed
        assert await _status(p, "9600001") == "resolved"
        # a change in Sentry since its last report is still a missed webhook: ignored there
        # behind our back, the incident is muted
        p.stub.issue_store.set_status(ORG, "9600001", "ignored")
        assert (await p.sweep()).counts() == {"muted": 1}
        await until("muted", lambda: _eq(_status(p, "9600001"), "muted"), timeout_s=60)


async def test_a_refused_write_back_does_not_get_the_action_reverted(make_pipeline: Any) -> None:
    """The app lacks ``event:write``: Sentry refuses the write-back (403), the resolve stands in
    BlameTrail, and the sweep does not reopen it."""
    from blametrail_sentry_stub.issue_update import ALL_SCOPES

    async with make_pipeline(write_back=ALL_SCOPES - {"event:write"}) as p:
        await p.open_issues(["9600101"])
        await p.act("9600101", "resolve")
        await until(
            "the refusal",
            lambda: _has_event(p, "9600101", "incident.writeback.refused"),
            timeout_s=120,
        )
        assert p.stub.issue_store.get(ORG, "9600101")["status"] == "unresolved"
        row = await p.sweep()
        assert row.counts() == {}
        await asyncio.sleep(1)
        assert await _status(p, "9600101") == "resolved"
        assert "incident.reopened" not in await _timeline(p, "9600101")


async def _has_event(p: Any, issue_id: str, event_type: str) -> bool:
    return event_type in await _timeline(p, issue_id)


async def test_a_deleted_issue_is_recorded_once_and_not_asked_about_again(
    make_pipeline: Any,
) -> None:
    """Sentry answers 404 for a deleted issue's detail: no repair (no webhook was lost), one
    ``deleted`` row, and no detail call on the sweeps after."""
    async with make_pipeline() as p:
        await p.open_issues(["9700001", "9700002"])
        p.stub.issue_store.delete(ORG, "9700001")
        first = await p.sweep()
        assert first.counts() == {}
        assert [(d.kind, d.sentry_issue_id) for d in first.deleted] == [("deleted", "9700001")]
        assert first.api_calls == 3  # the id search, the 404 detail, the creations search
        rows = await p.rows(
            "SELECT kind, detail ->> 'note' FROM reconcile_repairs WHERE incident_id = %s::uuid",
            p.incident_of("9700001"),
        )
        assert rows == [("deleted", "deleted in Sentry (404 on the issue's detail)")]
        details_before = _details(p)
        second = await p.sweep()
        assert second.deleted == []
        assert second.checked == 1
        assert second.api_calls == 2  # no detail call for the deleted issue
        assert _details(p) == details_before
        (repairs,) = await p.rows(
            "SELECT repairs FROM reconcile_sweeps WHERE sweep_id = %s", first.sweep_id
        )
        assert repairs == ({},)  # not counted as webhooks lost


def _details(p: Any) -> int:
    return sum(1 for r in p.stub.requests if r["route"] == "issue_detail")


async def test_a_sweep_whose_lock_connection_was_terminated_stops_before_publishing(
    make_pipeline: Any,
) -> None:
    """The session advisory lock lives on an idle connection: terminated (pg_terminate_backend)
    while Sentry is asked, the lock is gone and another replica may sweep; this sweep publishes
    nothing, is recorded failed, and the next one repairs."""
    import psycopg
    import pytest
    from blametrail_reconciler.sweep import LockLost

    async with make_pipeline() as p:
        await p.open_issues(["9800001"])
        p.stub.issue_store.set_status(ORG, "9800001", "resolved")
        conn = p.connections.get(p.connection_id)
        creds = p.connections.credentials(conn)
        killed: list[int] = []

        def terminate_lock_holder(stage: str, done: int, total: int) -> None:
            if stage != "publish" or killed:
                return
            with psycopg.connect(p.dsn, autocommit=True) as c:
                rows = c.execute(
                    "SELECT pid, pg_terminate_backend(pid) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
                    " AND ((classid::bigint << 32) | objid::bigint)"
                    "   = hashtextextended('blametrail-reconcile:' || %s, 0)",
                    (p.connection_id,),
                ).fetchall()
            killed.extend(r[0] for r in rows if r[1])

        before = await _observations(p)
        with pytest.raises(LockLost, match="advisory lock"):
            await p.sweeper.sweep(conn, creds, terminate_lock_holder)
        assert len(killed) == 1
        ((outcome, error),) = await p.rows(
            "SELECT outcome, error FROM reconcile_sweeps WHERE connection_id = %s",
            p.connection_id,
        )
        assert outcome == "failed"
        assert error.startswith("LockLost")
        await asyncio.sleep(1)  # anything it published would have had time to land
        assert await _observations(p) == before
        assert await _status(p, "9800001") == "open"
        again = await p.sweep()  # the lock went with the connection: free for the next sweep
        assert again.counts() == {"resolved": 1}
        await until("resolved", lambda: _eq(_status(p, "9800001"), "resolved"), timeout_s=60)
