"""The pure decisions of a sweep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from blametrail_common.events.observations import KnownIncident
from blametrail_reconciler import plan
from blametrail_reconciler.plan import Tracked
from blametrail_reconciler.schedule import Schedule

NOW = datetime(2026, 3, 16, 8, 0, tzinfo=UTC)
SETTLE = timedelta(seconds=120)


def tracked(issue_id: str, status: str = "open", changed: datetime | None = None) -> Tracked:
    known = KnownIncident(
        incident_id=f"inc-{issue_id}", service_id="s", severity="sev2", title="t", status=status
    )
    return Tracked(issue_id, known, changed or NOW - timedelta(hours=1))


def test_only_disagreements_become_decisions() -> None:
    batch = [
        tracked("1"),
        tracked("2"),
        tracked("3", "acknowledged"),
        tracked("4", "resolved"),
        tracked("5", "muted"),
        tracked("6"),
        tracked("7", changed=NOW - timedelta(seconds=30)),
    ]
    found = {
        "1": {"id": "1", "status": "unresolved"},  # agrees
        "2": {"id": "2", "status": "resolved"},
        "3": {"id": "3", "status": "unresolved"},  # acknowledged is open in Sentry's terms
        "4": {"id": "4", "status": "unresolved"},
        "5": {"id": "5", "status": "resolved"},
        "7": {"id": "7", "status": "resolved"},  # changed within the settle time: left alone
    }
    decisions, missing = plan.compare(batch, found, now=NOW, settle=SETTLE)
    assert [(d.asked_issue_id, d.kind, d.repair) for d in decisions] == [
        ("2", "status", "resolved"),
        ("4", "status", "reopened"),
        ("5", "status", "resolved"),
    ]
    assert [m.issue_id for m in missing] == ["6"]


def test_a_blametrail_action_sentry_never_saw_stands() -> None:
    """Sentry still shows what it last reported: the difference is ours (write-back off,
    refused or failed), not a missed webhook, and is left alone. A change in Sentry since its
    last report is still repaired."""

    def with_report(status: str, reported: str | None) -> Tracked:
        item = tracked("8", status)
        return Tracked(item.issue_id, item.incident, item.state_changed_at, reported)

    unresolved = {"id": "8", "status": "unresolved"}
    resolved = {"id": "8", "status": "resolved"}
    assert (
        plan.decide_status(
            with_report("resolved", "unresolved"), unresolved, now=NOW, settle=SETTLE
        )
        is None
    )
    assert (
        plan.decide_status(with_report("open", "resolved"), resolved, now=NOW, settle=SETTLE)
        is None
    )
    changed = plan.decide_status(
        with_report("resolved", "resolved"), unresolved, now=NOW, settle=SETTLE
    )
    assert changed is not None
    assert changed.repair == "reopened"
    unknown = plan.decide_status(with_report("resolved", None), unresolved, now=NOW, settle=SETTLE)
    assert unknown is not None
    assert unknown.repair == "reopened"


def test_an_answer_for_another_id_is_a_merge_even_while_settling() -> None:
    item = tracked("6", changed=NOW)
    d = plan.decide_status(item, {"id": "60", "status": "unresolved"}, now=NOW, settle=SETTLE)
    assert d is not None
    assert (d.kind, d.repair, d.issue["id"]) == ("merged", "merged", "60")


def test_paths_batches_and_cursors() -> None:
    assert len(list(plan.batches([tracked(str(i)) for i in range(250)]))) == 3
    path = plan.id_search_path("acme", ["1", "2"])
    assert path == "/api/0/organizations/acme/issues/?query=issue.id%3A%5B1%2C2%5D&limit=100"
    since = plan.creations_path("acme", NOW, "0:100:0")
    assert "firstSeen%3A%3E2026-03-16T08%3A00%3A00" in since
    assert since.endswith("cursor=0%3A100%3A0")
    link = (
        '<https://s/?cursor=0:0:1>; rel="previous"; results="false"; cursor="0:0:1", '
        '<https://s/?cursor=0:100:0>; rel="next"; results="true"; cursor="0:100:0"'
    )
    assert plan.next_cursor(link) == "0:100:0"
    assert plan.next_cursor(link.replace('results="true"', 'results="false"')) is None
    assert plan.next_cursor(None) is None


def test_creations_only_for_mapped_projects_without_an_incident() -> None:
    issues: list[dict[str, Any]] = [
        {"id": "1", "project": {"slug": "a"}},
        {"id": "2", "project": {"slug": "a"}},
        {"id": "2", "project": {"slug": "a"}},  # a page overlap: once
        {"id": "3", "project": {"slug": "b"}},
        {"id": "4", "project": "junk"},
    ]
    out = plan.decide_created(
        issues, {"inc-1"}, {"a"}, lambda i: f"inc-{i}", now=NOW, settle=SETTLE
    )
    assert [d.asked_issue_id for d in out] == ["2"]


def test_an_issue_seconds_old_is_left_to_settle_and_found_by_the_next_sweep() -> None:
    """Its issue.created webhook may be in flight: not a missed one yet (no false "webhooks
    lost"). The next sweep's bound reaches back past the settle time, so it is found then."""

    def issue(issue_id: str, first_seen: str) -> dict[str, Any]:
        return {"id": issue_id, "project": {"slug": "a"}, "firstSeen": first_seen}

    issues = [
        issue("1", "2026-03-16T07:59:30Z"),  # 30 s old: settling
        issue("2", "2026-03-16T07:57:59.000000Z"),  # 121 s old
        issue("3", "2026-03-16T07:58:00+00:00"),  # exactly the settle time
        issue("4", "not a time"),  # unreadable: not held back
        {"id": "5", "project": {"slug": "a"}},  # none: not held back
    ]
    out = plan.decide_created(issues, set(), {"a"}, str, now=NOW, settle=SETTLE)
    assert [d.asked_issue_id for d in out] == ["2", "3", "4", "5"]
    later = plan.decide_created(
        issues[:1], set(), {"a"}, str, now=NOW + timedelta(minutes=5), settle=SETTLE
    )
    assert [d.asked_issue_id for d in later] == ["1"]
    bound = plan.creations_since(
        NOW,
        NOW + timedelta(minutes=5),
        overlap=timedelta(seconds=60),
        settle=SETTLE,
        first_lookback=timedelta(hours=1),
    )
    assert bound == NOW - SETTLE  # a settle longer than the overlap still covers issue 1
    assert plan.creations_since(
        NOW, NOW, overlap=timedelta(minutes=10), settle=SETTLE, first_lookback=timedelta(hours=1)
    ) == NOW - timedelta(minutes=10)
    assert plan.creations_since(
        None, NOW, overlap=timedelta(0), settle=SETTLE, first_lookback=timedelta(hours=1)
    ) == NOW - timedelta(hours=1)


def test_schedule_jitters_and_spreads_first_sweeps() -> None:
    values = iter([0.5, 0.0, 1.0])
    s = Schedule(300, 0.2, lambda: next(values))
    assert s.due_now(["c"], 1000) == []  # first due at 1000 + 300*0.2*0.5
    assert s.due_now(["c"], 1030) == ["c"]
    s.done("c", 1030)  # next within [240, 360]: rng 0.0 -> 240
    assert s.due["c"] == 1270
    s.done("c", 1270)
    assert s.due["c"] == 1270 + 360


def test_the_first_sweeps_wait_the_start_delay_then_their_spread() -> None:
    s = Schedule(300, 0.2, lambda: 0.5, start_delay_s=3600)
    assert s.due_now(["c"], 1000) == []
    assert s.due["c"] == 1000 + 3600 + 30
    assert s.due_now(["c"], 4629) == []
    assert s.due_now(["c"], 4630) == ["c"]


def test_observation_ids_are_the_same_for_the_same_disagreement() -> None:
    """Two sweeps that find the same disagreement (the first crashed before recording it, or
    the projection had not folded it yet) publish it under the same id; a new state on either
    side is a new observation."""
    item = tracked("9")
    resolved = {"id": "9", "status": "resolved", "lastSeen": "2026-03-16T07:00:00Z"}
    first = plan.decide_status(item, resolved, now=NOW, settle=SETTLE)
    again = plan.decide_status(item, resolved, now=NOW + timedelta(minutes=5), settle=SETTLE)
    assert first is not None
    assert again is not None
    assert again.observed_at == NOW + timedelta(minutes=5)  # stamped when Sentry answered
    assert plan.observation_id("c", first) == plan.observation_id("c", again)
    assert plan.observation_id("c", first) != plan.observation_id("other", first)
    later = plan.decide_status(
        Tracked(item.issue_id, item.incident, NOW - timedelta(minutes=10)),
        resolved,
        now=NOW,
        settle=SETTLE,
    )  # reopened since, resolved again behind our back: a new repair
    assert later is not None
    assert plan.observation_id("c", later) != plan.observation_id("c", first)
    seen_again = {**resolved, "lastSeen": "2026-03-16T07:30:00Z"}
    regressed = plan.decide_status(item, seen_again, now=NOW, settle=SETTLE)
    assert regressed is not None
    assert plan.observation_id("c", regressed) != plan.observation_id("c", first)
    fresh = [{"id": "10", "project": {"slug": "a"}}]
    created = plan.decide_created(fresh, set(), {"a"}, str, now=NOW, settle=SETTLE)
    assert plan.observation_id("c", created[0]) == plan.observation_id(
        "c", plan.decide_created(fresh, set(), {"a"}, str, now=NOW, settle=SETTLE)[0]
    )
