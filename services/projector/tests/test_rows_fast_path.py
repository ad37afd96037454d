"""``rows_for``'s fast path for incident events is its slow one: an event whose JSON has no
``\\u0000`` takes its texts as they are (no ``pgsafe`` per field) and its type's facts from a
table kept per type; any event of any kind, with any texts (NUL, a backslash and ``u0000``,
escapes), gives the very rows ``pgsafe`` and the ``isinstance`` rules give it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from blametrail_common.events import decode, encode, new_event
from blametrail_common.events.incidents import (
    Actor,
    Assignee,
    IncidentActionV1,
    IncidentAssignedV1,
    IncidentEvent,
    IncidentMutedV1,
    IncidentOpenedV1,
    IncidentReopenedV1,
    IncidentResolvedV1,
    IncidentUpdatedV1,
    IssueSnapshot,
    SentryRef,
)
from blametrail_common.events.observations import (
    IncidentAbsorbedV1,
    IncidentMergedV1,
    MovedLink,
)
from blametrail_projector.rows import (
    _incident,
    _safe_model,
    _sets_assignee,
    rows_for,
    sets_status,
    status_for,
)
from hypothesis import given
from hypothesis import strategies as st

T0 = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
# events come from bytes: no lone surrogate (neither JSON parser reads one)
TEXT = st.one_of(
    st.sampled_from(["", "KeyError", "nul\x00here", "\\u0000", "tab\t\\N", "é🎉"]),
    st.text(st.characters(codec="utf-8"), max_size=10),
)
OPTIONAL = st.one_of(st.none(), TEXT)
SENTRY_STATUS = st.sampled_from([None, "unresolved", "resolved", "ignored", "odd"])
EXTRA: dict[type[IncidentEvent], Any] = {
    IncidentOpenedV1: st.just({}),
    IncidentReopenedV1: st.just({}),
    IncidentUpdatedV1: st.fixed_dictionaries({"reason": TEXT}),
    IncidentResolvedV1: st.fixed_dictionaries({"resolution_type": OPTIONAL}),
    IncidentMutedV1: st.fixed_dictionaries({"details": st.dictionaries(TEXT, OPTIONAL)}),
    IncidentAssignedV1: st.fixed_dictionaries(
        {"assignee": st.one_of(st.none(), st.builds(Assignee, type=TEXT, id=TEXT, name=OPTIONAL))}
    ),
    IncidentActionV1: st.fixed_dictionaries(
        {
            "action_id": TEXT,
            "action": st.sampled_from(["acknowledge", "resolve", "reopen", "assign"]),
            "actor": st.builds(Actor, kind=st.just("user"), id=TEXT, name=TEXT),
            "status": st.sampled_from(["open", "acknowledged", "resolved", "muted"]),
            "assignee": st.one_of(st.none(), st.builds(Assignee, type=TEXT, id=TEXT)),
        }
    ),
    IncidentMergedV1: st.fixed_dictionaries({"into_incident_id": TEXT, "into_issue_id": TEXT}),
    IncidentAbsorbedV1: st.fixed_dictionaries(
        {
            "merged_incident_id": TEXT,
            "merged_issue_id": TEXT,
            "moved_links": st.lists(
                st.builds(MovedLink, external_issue_id=OPTIONAL, web_url=OPTIONAL), max_size=2
            ),
        }
    ),
}


@st.composite
def events(draw: st.DrawFn) -> IncidentEvent:
    kind = draw(st.sampled_from(list(EXTRA)))
    return kind(
        incident_id=draw(TEXT),
        tenant_id=draw(TEXT),
        service_id=draw(TEXT),
        source=draw(st.sampled_from(["sentry_issue", "sentry_metric_alert"])),
        severity=draw(st.sampled_from(["sev1", "sev2", "sev5"])),
        status_at=T0 + timedelta(seconds=draw(st.integers(0, 10**6))),
        sentry=SentryRef(connection_id=draw(TEXT), issue_id=draw(OPTIONAL), web_url=draw(OPTIONAL)),
        snapshot=IssueSnapshot(
            title=draw(TEXT),
            culprit=draw(OPTIONAL),
            status=draw(SENTRY_STATUS),
            count=draw(st.one_of(st.none(), st.integers(-5, 10**20))),
        ),
        **draw(EXTRA[kind]),
    )


_OBSERVED = {"unresolved": "open", "resolved": "resolved", "ignored": "muted"}


def _status_by_isinstance(e: IncidentEvent) -> str:
    """``rows.status_for`` as it was written before the per-type table."""
    if isinstance(e, IncidentActionV1):
        return e.status
    if isinstance(e, IncidentResolvedV1 | IncidentMergedV1):
        return "resolved"
    if isinstance(e, IncidentAbsorbedV1):
        return _OBSERVED.get(e.snapshot.status or "", "open")
    if isinstance(e, IncidentMutedV1):
        return "muted"
    if isinstance(e, IncidentAssignedV1):
        return _OBSERVED.get(e.snapshot.status or "", "open")
    return "open"


def _sets_status_by_isinstance(e: IncidentEvent) -> bool:
    if isinstance(e, IncidentActionV1):
        return e.action != "assign"
    return not isinstance(e, IncidentUpdatedV1 | IncidentAssignedV1 | IncidentAbsorbedV1)


def _sets_assignee_by_isinstance(e: IncidentEvent) -> bool:
    return isinstance(e, IncidentAssignedV1) or (
        isinstance(e, IncidentActionV1) and e.action == "assign"
    )


class _Record:
    def __init__(self, value: bytes) -> None:
        self.value, self.partition, self.offset, self.topic = value, 3, 7, "incident-events"


@given(events())
def test_the_fast_rows_are_the_sanitised_ones(e: IncidentEvent) -> None:
    value = encode(new_event(e, key=e.incident_id, tenant="t"))
    p = decode(value).payload
    assert status_for(p) == _status_by_isinstance(p)
    assert sets_status(p) == _sets_status_by_isinstance(p)
    assert _sets_assignee(p) == _sets_assignee_by_isinstance(p)
    rows = rows_for([_Record(value)])
    assert rows.undecodable == []
    (incident,) = rows.incidents
    # the slow path: no dump given, so every text through pgsafe
    assert incident == _incident(p)
    (timeline,) = rows.timeline
    payload, changed = _safe_model(p)
    assert (timeline["payload"], timeline["sanitized"]) == (payload, changed)
    assert len(rows.links) == (
        len(p.moved_links) if isinstance(p, IncidentAbsorbedV1) and p.sentry.issue_id else 0
    )
