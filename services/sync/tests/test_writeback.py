"""Write-back to Sentry end to end (issue 18 §2): real broker, Postgres, ingest and the stand-in."""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Any

from blametrail_common.crypto import generate_key
from blametrail_common.events.actions import sentry_status_for
from blametrail_devstack.testkit import until
from blametrail_sentry_stub.issue_update import ALL_SCOPES
from blametrail_sync.worker import WRITEBACKS

ORG = "acme"  # the stand-in organization of conftest's pipeline
Pipeline = Any


def _sentry_status(p: Pipeline, issue_id: str) -> str:
    issue = p.stub.issue_store.get(ORG, issue_id)
    assert issue is not None
    return str(issue["status"])


async def test_resolve_in_blametrail_resolves_the_issue_once_and_the_echo_confirms(
    make_pipeline: Any,
) -> None:
    async with make_pipeline() as p:
        incident = await p.open_issue("7001")
        answer = await p.act(incident, "resolve")
        assert answer.status_code == 202, answer.text

        async def echoed() -> bool:
            return "incident.writeback.echoed" in await p.timeline(incident)

        await until("the echo on the timeline", echoed, timeout_s=120)
        await until("the worker caught up", p.synced, timeout_s=60)
        assert _sentry_status(p, "7001") == "resolved"
        updates = p.app_updates("7001")
        assert [u["body"] for u in updates] == [{"status": "resolved"}]
        assert await p.status(incident) == "resolved"
        timeline = await p.timeline(incident)
        # Sentry's webhook for our change is a confirmation, no state change of its own.
        assert sorted(timeline) == sorted(
            [
                "incident.opened",
                "incident.action",
                "incident.writeback.requested",
                "incident.writeback.confirmed",
                "incident.writeback.echoed",
            ]
        )
        assert len(p.stub.apps.sent) == 1  # one webhook, from one update


async def test_acknowledge_is_ongoing_and_reopen_unresolves(make_pipeline: Any) -> None:
    async with make_pipeline() as p:
        incident = await p.open_issue("7101")
        assert (await p.act(incident, "acknowledge")).status_code == 202

        async def confirmed(n: int) -> bool:
            return (await p.timeline(incident)).count("incident.writeback.confirmed") >= n

        await until("acknowledge written back", lambda: confirmed(1), timeout_s=120)
        issue = p.stub.issue_store.get(ORG, "7101")
        assert issue is not None
        assert (issue["status"], issue["substatus"]) == ("unresolved", "ongoing")
        assert (await p.act(incident, "resolve")).status_code == 202
        await until("resolve written back", lambda: confirmed(2), timeout_s=120)
        assert (await p.act(incident, "reopen")).status_code == 202
        await until("reopen written back", lambda: confirmed(3), timeout_s=120)
        await until("the worker caught up", p.synced, timeout_s=60)
        assert _sentry_status(p, "7101") == "unresolved"
        assert await p.status(incident) == "open"
        assert [u["body"]["status"] for u in p.app_updates("7101")] == [
            "unresolved",
            "resolved",
            "unresolved",
        ]


async def _race(p: Pipeline, issue_id: str, rng: random.Random) -> str:
    """BlameTrail acknowledges while a person resolves the issue in Sentry, in either order
    within a few milliseconds."""
    incident = await p.open_issue(issue_id)

    async def blametrail() -> None:
        await asyncio.sleep(rng.random() * 0.05)
        answer = await p.act(incident, "acknowledge")
        assert answer.status_code in (202, 409), answer.text  # 409: Sentry's resolve came first

    async def sentry() -> None:
        await asyncio.sleep(rng.random() * 0.05)
        await p.user_update(issue_id, status="resolved")

    await asyncio.gather(blametrail(), sentry())
    return incident


async def test_concurrent_changes_end_equal_on_both_sides_20_times(make_pipeline: Any) -> None:
    rng = random.Random(18)
    async with make_pipeline() as p:
        ids = [str(7200 + i) for i in range(20)]
        incidents = await asyncio.gather(*(_race(p, i, rng) for i in ids))

        async def equal() -> bool:
            for issue_id, incident in zip(ids, incidents, strict=True):
                status = await p.status(incident)
                mirrored = sentry_status_for(status or "")
                if mirrored is None or mirrored[0] != _sentry_status(p, issue_id):
                    return False
            return True

        await until("both sides equal", equal, timeout_s=180)
        await until("the worker caught up", p.synced, timeout_s=60)
        await until("still equal once everything was applied", equal, timeout_s=60)
        for issue_id in ids:  # a write-back, at most one repair: no flapping
            assert len(p.app_updates(issue_id)) <= 2, p.app_updates(issue_id)


async def test_the_sentry_change_that_contested_read_again_after_the_repair_repairs_nothing(
    make_pipeline: Any,
) -> None:
    """BlameTrail acknowledges; a person resolves in Sentry just after our PUT landed, stamped
    (whole seconds) before our action: the resolve loses by order but Sentry shows it, so the
    acknowledge is written again. Then that resolve's webhook is read once more (ingest's spool
    fallback delivers a batch Kafka took late both ways): nothing more is written."""
    async with make_pipeline() as p:
        incident = await p.open_issue("7401")
        before = time.time()
        assert (await p.act(incident, "acknowledge")).status_code == 202

        async def confirmed(n: int) -> bool:
            return (await p.timeline(incident)).count("incident.writeback.confirmed") >= n

        await until("acknowledge written back", lambda: confirmed(1), timeout_s=120)
        # a contest needs the PUT within 1 s and the margin of the stamp (0.2 s measured here)
        took = p.app_updates("7401")[0]["at"] - before
        assert took < 2, f"our PUT came {took:.1f} s after the action: no contest is possible"
        # the person's webhook is stamped in the second before our action was accepted
        stamp = math.floor(before - 0.01)
        p.stub.clock_offset_s = stamp + 0.1 - time.time()

        async def sent() -> bool:
            return not p.stub.apps._tasks

        await p.user_update("7401", status="resolved")
        await until("the resolve's webhook sent", sent, timeout_s=30)
        p.stub.clock_offset_s = 0.0
        await until("the contest repaired", lambda: confirmed(2), timeout_s=120)
        await until("the worker caught up", p.synced, timeout_s=60)
        assert [u["body"] for u in p.app_updates("7401")] == [
            {"status": "unresolved", "substatus": "ongoing"}
        ] * 2
        assert await p.redeliver("7401", "resolved") == 1
        await until("the worker caught up", p.synced, timeout_s=60)
        await asyncio.sleep(1)  # a write-back the copy set off would be on its way by now
        await until("the worker caught up", p.synced, timeout_s=60)
        assert len(p.app_updates("7401")) == 2, p.app_updates("7401")
        assert (await p.status(incident), _sentry_status(p, "7401")) == (
            "acknowledged",
            "unresolved",
        )


async def test_refused_write_back_is_on_the_timeline_counted_and_not_retried(
    make_pipeline: Any,
) -> None:
    refused_before = WRITEBACKS.labels("refused")._value.get()
    async with make_pipeline(scopes=ALL_SCOPES - {"event:write"}) as p:
        incident = await p.open_issue("7301")
        assert (await p.act(incident, "resolve")).status_code == 202

        async def refused() -> bool:
            return "incident.writeback.refused" in await p.timeline(incident)

        await until("the refusal on the timeline", refused, timeout_s=120)
        assert await p.status(incident) == "resolved"  # the BlameTrail action stands
        # A later event of the incident (an assignment) does not try the refused one again.
        answer = await p.api.post(
            f"/api/v1/incidents/{incident}/assign",
            headers=p.auth,
            json={"name": "on-call"},
        )
        assert answer.status_code == 202, answer.text

        async def assigned() -> bool:
            return (await p.timeline(incident)).count("incident.action") == 2

        await until("the assignment", assigned, timeout_s=120)
        await until("the worker caught up", p.synced, timeout_s=60)
        timeline = await p.timeline(incident)
        assert timeline.count("incident.writeback.refused") == 1
        assert timeline.count("incident.writeback.requested") == 1
        assert p.app_updates("7301") == []
        assert _sentry_status(p, "7301") == "unresolved"
        payload = await p.rows(
            "SELECT payload FROM incident_timeline WHERE incident_id = %s"
            " AND event_type = 'incident.writeback.refused'",
            incident,
        )
        assert payload[0][0]["http_status"] == 403
        assert WRITEBACKS.labels("refused")._value.get() == refused_before + 1


async def test_a_token_unreadable_for_now_fails_and_is_dead_lettered_not_refused(
    make_pipeline: Any,
) -> None:
    """An enabled connection whose token the worker cannot read at the moment (a key rotation or
    a refresh in flight) is a transient failure: dead-lettered for a redrive, never "refused"."""
    failed_before = WRITEBACKS.labels("failed")._value.get()
    refused_before = WRITEBACKS.labels("refused")._value.get()
    async with make_pipeline(worker_key=generate_key()) as p:
        incident = await p.open_issue("7351")
        assert (await p.act(incident, "resolve")).status_code == 202

        async def failed() -> bool:
            return "incident.writeback.failed" in await p.timeline(incident)

        await until("the failure on the timeline", failed, timeout_s=120)
        await until("the worker caught up", p.synced, timeout_s=60)
        timeline = await p.timeline(incident)
        assert "incident.writeback.refused" not in timeline
        assert await p.status(incident) == "resolved"  # the BlameTrail action stands
        assert p.app_updates("7351") == []
        assert WRITEBACKS.labels("failed")._value.get() == failed_before + 1
        assert WRITEBACKS.labels("refused")._value.get() == refused_before


async def test_the_write_back_time_is_when_sentry_answered_not_when_it_was_sent(
    make_pipeline: Any,
) -> None:
    """Issue 18 M2: the client may hold a PUT for long (retries, rate limits); a Sentry change
    made meanwhile is overwritten by it, so the repair rule must compare with when the PUT
    returned (the later bound), not when it was started."""
    from blametrail_sentry_stub.state import Fault

    async with make_pipeline() as p:
        incident = await p.open_issue("7301")
        p.stub.faults.append(Fault("issue_update", "slow", count=1, delay_s=3.0))
        answer = await p.act(incident, "resolve")
        assert answer.status_code == 202, answer.text
        await until("the write-back", lambda: _written(p, incident), timeout_s=120)
        ((winner_at, written_at),) = await p.rows(
            "SELECT winner_at, written_at FROM sync_incidents WHERE incident_id = %s", incident
        )
        assert (written_at - winner_at).total_seconds() >= 3.0


async def _written(p: Pipeline, incident: str) -> bool:
    rows = await p.rows("SELECT written_at FROM sync_incidents WHERE incident_id = %s", incident)
    return bool(rows) and rows[0][0] is not None
