"""The race rule, pure: whichever change is later wins on both sides, and Sentry is written
exactly what it needs (once for an action, once more only to repair an overwrite)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from blametrail_common.events.incidents import (
    Actor,
    IncidentActionV1,
    IncidentAssignedV1,
    IncidentMutedV1,
    IncidentReopenedV1,
    IncidentResolvedV1,
    IncidentUpdatedV1,
    IssueSnapshot,
    SentryRef,
)
from blametrail_sync.plan import Plan, Winner, observe, plan, written

T0 = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
BASE: dict[str, Any] = {
    "incident_id": "i1",
    "tenant_id": "t1",
    "service_id": "s1",
    "source": "sentry_issue",
    "severity": "sev2",
    "sentry": SentryRef(connection_id="c1", issue_id="42"),
}


def _action(at: datetime, action: str = "resolve", status: str = "resolved") -> IncidentActionV1:
    return IncidentActionV1(
        **BASE,
        status_at=at,
        snapshot=IssueSnapshot(title="x"),
        action_id=str(uuid.uuid4()),
        action=action,  # type: ignore[arg-type]
        actor=Actor(kind="user", id="u1", name="Mia"),
        status=status,  # type: ignore[arg-type]
    )


def _sentry_reopen(at: datetime) -> IncidentReopenedV1:
    return IncidentReopenedV1(
        **BASE, status_at=at, snapshot=IssueSnapshot(title="x", status="unresolved")
    )


def _fold(*events: Any) -> Winner | None:
    w = None
    for e in events:
        w = observe(w, e)
    return w


def test_a_blametrail_action_is_written_back_once() -> None:
    w = _fold(_action(T0))
    assert plan(w, enabled=True) == Plan("resolved", "action")
    assert w is not None
    done = written(w, "resolved", T0 + timedelta(seconds=1))
    assert plan(done, enabled=True) is None
    assert plan(w, enabled=False) is None  # the connection's setting


def test_a_later_sentry_change_wins_and_needs_no_write_back_when_it_came_after_ours() -> None:
    w = written(_fold(_action(T0)), "resolved", T0 + timedelta(milliseconds=200))  # type: ignore[arg-type]
    w = observe(w, _sentry_reopen(T0 + timedelta(seconds=10)))
    assert w is not None
    assert (w.status, w.origin) == ("open", "sentry")
    assert plan(w, enabled=True) is None


def test_our_write_back_overwriting_a_later_sentry_change_is_repaired_once() -> None:
    # BlameTrail resolves at T0; a person reopens in Sentry at T0+1s; our PUT lands at T0+1.5s
    # (after the reopen in Sentry's real order) and resolves it again there.
    w = written(_fold(_action(T0)), "resolved", T0 + timedelta(milliseconds=1500))  # type: ignore[arg-type]
    w = observe(w, _sentry_reopen(T0 + timedelta(seconds=1)))
    assert (w.status if w else None) == "open"
    assert plan(w, enabled=True) == Plan("open", "repair")
    assert w is not None
    repaired = written(w, "open", T0 + timedelta(seconds=2))
    assert plan(repaired, enabled=True) is None


def test_an_earlier_sentry_change_loses_to_the_action_in_any_arrival_order() -> None:
    action, reopen = _action(T0), _sentry_reopen(T0 - timedelta(seconds=3))
    for events in ((action, reopen), (reopen, action)):
        w = _fold(*events)
        assert w is not None
        assert (w.status, w.origin) == ("resolved", "blametrail")
        assert plan(w, enabled=True) == Plan("resolved", "action")


def test_assignments_and_muted_states_are_not_written_back() -> None:
    assign = _action(T0, "assign", "open")
    assert _fold(assign) is None
    assigned = IncidentAssignedV1(
        **BASE, status_at=T0, snapshot=IssueSnapshot(title="x"), assignee=None
    )
    assert _fold(assigned) is None
    muted = IncidentMutedV1(**BASE, status_at=T0, snapshot=IssueSnapshot(title="x"), details={})
    assert plan(_fold(muted), enabled=True) is None
    resolved = IncidentResolvedV1(**BASE, status_at=T0, snapshot=IssueSnapshot(title="x"))
    assert plan(_fold(resolved), enabled=True) is None  # Sentry's own: nothing to write


def test_a_later_alert_is_no_sentry_change_and_repairs_nothing() -> None:
    """Issue 18 H1, scenario 1: acknowledged at 12:00:00.5, written back at :00.7; the next
    event alert (hook 12:00:02) made Sentry's ``open`` the winner and plan() a repair that PUT
    ``unresolved``, dropping Sentry's ``ongoing``. An alert is no status change."""
    for name, status in (("acknowledge", "acknowledged"), ("resolve", "resolved")):
        w = _fold(_action(T0 + timedelta(milliseconds=500), name, status))
        assert w is not None
        w = written(w, status, T0 + timedelta(milliseconds=700))
        alert = IncidentUpdatedV1(
            **BASE,
            status_at=T0 + timedelta(seconds=2),
            snapshot=IssueSnapshot(title="x"),
            reason="alert_triggered",
        )
        after = observe(w, alert)
        assert after == w
        assert plan(after, enabled=True) is None


def test_a_sentry_change_losing_by_its_floored_stamp_but_landing_after_our_put_is_repaired() -> (
    None
):
    """Issue 18 M1: resolve action at :00.3, our PUT lands :00.5, a person reopens in Sentry at
    :00.9, stamped 12:00:00 (whole seconds): the reopen sorts before the action and loses, yet
    Sentry shows it. The winner is written again, once."""
    w = written(
        _fold(_action(T0 + timedelta(milliseconds=300))),
        "resolved",
        T0 + timedelta(milliseconds=500),
    )  # type: ignore[arg-type]
    w = observe(w, _sentry_reopen(T0))
    assert w is not None
    assert (w.status, w.origin) == ("resolved", "blametrail")  # still the winner
    assert plan(w, enabled=True) == Plan("resolved", "repair")
    again = written(w, "resolved", T0 + timedelta(seconds=2))
    assert plan(again, enabled=True) is None  # once


def test_a_losing_sentry_change_well_before_our_put_or_to_the_same_state_needs_nothing() -> None:
    w = written(_fold(_action(T0)), "resolved", T0 + timedelta(milliseconds=500))  # type: ignore[arg-type]
    # stamped more than a second and the margin before the PUT: it happened before it
    early = observe(w, _sentry_reopen(T0 - timedelta(seconds=4)))
    assert early == w
    assert plan(early, enabled=True) is None
    same = observe(
        w,
        IncidentResolvedV1(
            **BASE,
            status_at=T0 - timedelta(milliseconds=1),
            snapshot=IssueSnapshot(title="x", status="resolved"),
        ),
    )
    assert same == w  # Sentry shows our state anyway
    unwritten = observe(_fold(_action(T0)), _sentry_reopen(T0))  # nothing written back yet
    assert plan(unwritten, enabled=True) == Plan("resolved", "action")


def test_a_later_action_after_a_contest_is_an_action_again() -> None:
    w = written(
        _fold(_action(T0 + timedelta(milliseconds=300))),
        "resolved",
        T0 + timedelta(milliseconds=500),
    )  # type: ignore[arg-type]
    w = observe(w, _sentry_reopen(T0))
    w = observe(w, _action(T0 + timedelta(seconds=5), "acknowledge", "acknowledged"))
    assert plan(w, enabled=True) == Plan("acknowledged", "action")


def test_the_contesting_change_read_again_after_the_repair_contests_nothing() -> None:
    """At least once: the Sentry change that contested the winner comes again after the repair
    (ingest spooled its webhook while Kafka took it late, or a redelivery). It landed before the
    repair, which was made after it was read: no second repair."""
    reopen = _sentry_reopen(T0)
    w = written(
        _fold(_action(T0 + timedelta(milliseconds=300))),
        "resolved",
        T0 + timedelta(milliseconds=500),
    )  # type: ignore[arg-type]
    w = observe(w, reopen)
    assert plan(w, enabled=True) == Plan("resolved", "repair")
    repaired = written(w, "resolved", T0 + timedelta(seconds=1))  # type: ignore[arg-type]
    assert observe(repaired, reopen) == repaired
    assert plan(observe(repaired, reopen), enabled=True) is None
    # another change, in the same second: it may have landed after the repair, so it contests
    other = IncidentResolvedV1(
        **BASE,
        status_at=T0,
        snapshot=IssueSnapshot(title="x", status="resolved"),
    )
    ack = written(
        _fold(_action(T0 + timedelta(milliseconds=300), "acknowledge", "acknowledged")),
        "acknowledged",
        T0 + timedelta(milliseconds=500),
    )  # type: ignore[arg-type]
    ack = written(observe(ack, reopen), "acknowledged", T0 + timedelta(seconds=1))  # type: ignore[arg-type]
    assert observe(ack, reopen) == ack
    assert plan(observe(ack, other), enabled=True) == Plan("acknowledged", "repair")
