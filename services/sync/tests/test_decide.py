"""One poll batch, pure: each incident's final winner is planned once, and only when the winning
event is in the batch (so an old refused write-back is not tried again by later events)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from blametrail_common.events.incidents import (
    Actor,
    IncidentActionV1,
    IncidentReopenedV1,
    IssueSnapshot,
    SentryRef,
)
from blametrail_sync.decide import Tracked, decide
from blametrail_sync.plan import Plan, observe, written

T0 = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def _base(source: str = "sentry_issue", issue_id: str | None = "42") -> dict[str, Any]:
    return {
        "incident_id": "i1",
        "tenant_id": "t1",
        "service_id": "s1",
        "source": source,
        "severity": "sev2",
        "sentry": SentryRef(connection_id="c1", issue_id=issue_id),
    }


def _action(at: datetime, action: str = "resolve", status: str = "resolved", **kw: Any) -> Any:
    return IncidentActionV1(
        **_base(**kw),
        status_at=at,
        snapshot=IssueSnapshot(title="x"),
        action_id=str(uuid.uuid4()),
        action=action,  # type: ignore[arg-type]
        actor=Actor(kind="user", id="u1", name="Mia"),
        status=status,  # type: ignore[arg-type]
        assignee={"type": "text", "id": "on-call", "name": "on-call"}
        if action == "assign"
        else None,
    )


def _reopen(at: datetime) -> IncidentReopenedV1:
    return IncidentReopenedV1(
        **_base(), status_at=at, snapshot=IssueSnapshot(title="x", status="unresolved")
    )


def test_only_the_final_winner_of_a_batch_is_written_back() -> None:
    events = [(0, _action(T0)), (1, _action(T0 + timedelta(seconds=5), "reopen", "open"))]
    [d] = decide(events, {}, lambda _: True)
    assert d.plan == Plan("open", "action")
    assert d.winner_index == 1
    assert (d.tracked.connection_id, d.tracked.issue_id) == ("c1", "42")


def test_a_later_sentry_change_in_the_same_batch_means_no_write() -> None:
    events = [(0, _action(T0)), (1, _reopen(T0 + timedelta(seconds=5)))]
    [d] = decide(events, {}, lambda _: True)
    assert d.plan is None
    assert d.tracked.winner.origin == "sentry"


def test_an_event_that_does_not_win_does_not_replan_an_old_winner() -> None:
    winner = observe(None, _action(T0))
    assert winner is not None
    known = {"i1": Tracked("i1", "t1", "c1", "42", winner)}  # its write-back was refused
    assign = _action(T0 + timedelta(seconds=9), "assign", "resolved")
    assert decide([(0, assign)], known, lambda _: True) == []


def test_a_redelivered_winner_is_written_back_again() -> None:
    event = _action(T0)
    winner = observe(None, event)
    assert winner is not None
    known = {"i1": Tracked("i1", "t1", "c1", "42", winner)}  # failed: not written
    [d] = decide([(3, event)], known, lambda _: True)
    assert d.plan == Plan("resolved", "action")
    assert d.winner_index == 3


def test_the_contesting_change_redelivered_in_a_later_batch_repairs_nothing_more() -> None:
    """The Sentry change that contested the winner, read again after the repair: the batch after
    the repair decides nothing (the stored winner already names it)."""
    reopen = _reopen(T0)
    [d] = decide(
        [(0, reopen)],
        {
            "i1": Tracked(
                "i1",
                "t1",
                "c1",
                "42",
                written(
                    observe(None, _action(T0 + timedelta(milliseconds=300))),  # type: ignore[arg-type]
                    "resolved",
                    T0 + timedelta(milliseconds=500),
                ),
            )
        },
        lambda _: True,
    )
    assert (d.plan, d.winner_index) == (Plan("resolved", "repair"), 0)
    repaired = replace(
        d.tracked, winner=written(d.tracked.winner, "resolved", T0 + timedelta(seconds=1))
    )
    assert decide([(0, reopen)], {"i1": repaired}, lambda _: True) == []


def test_a_failed_repair_is_planned_again_when_its_contesting_change_is_redriven() -> None:
    reopen = _reopen(T0)
    action = _action(T0 + timedelta(milliseconds=300))
    ours = written(observe(None, action), "resolved", T0 + timedelta(milliseconds=500))  # type: ignore[arg-type]
    [d] = decide([(0, reopen)], {"i1": Tracked("i1", "t1", "c1", "42", ours)}, lambda _: True)
    assert d.plan == Plan("resolved", "repair")
    failed = {"i1": d.tracked}  # Sentry did not answer: stored as it was, the reopen dead-lettered
    [again] = decide([(5, reopen)], failed, lambda _: True)
    assert (again.plan, again.winner_index) == (Plan("resolved", "repair"), 5)
    assign = _action(T0 + timedelta(seconds=9), "assign", "resolved")
    assert decide([(0, assign)], failed, lambda _: True) == []  # nothing else replans it


def test_the_connection_setting_and_the_source_are_obeyed() -> None:
    assert decide([(0, _action(T0))], {}, lambda _: False)[0].plan is None
    metric = _action(T0, source="sentry_metric_alert", issue_id=None)
    assert decide([(0, metric)], {}, lambda _: True) == []
