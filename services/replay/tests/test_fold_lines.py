"""The fold's fast ``COPY`` lines are the generic ones (``copy_line``) for any value: tabs,
newlines, backslashes, ``\\N`` in text, NULLs, JSON with escapes; naive datetimes are refused.
The compact incident state folds an incident's rows as the live merge does."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from blametrail_projector.rows import EncodedJson, merge_incident
from blametrail_replay.fold import (
    COLUMNS,
    Shared,
    Unfoldable,
    _incident_line_slow,
    _micros,
    _time_bytes,
    _time_text,
    audit_line,
    copy_line,
    fold_incident,
    incident_line,
    timeline_line,
)
from hypothesis import given
from hypothesis import strategies as st

TRICKY = st.sampled_from(["", "plain", "tab\there", "new\nline\r", "back\\slash \\N", "\\", "é🎉"])
TEXT = st.one_of(TRICKY, st.text(max_size=12))
OPTIONAL = st.one_of(st.none(), TEXT)
JSON = st.sampled_from(
    [b"{}", b'{"a":"b\\\\c"}', b'{"t":"x\\ty\\nz"}', b'{"u":"\\u00e9"}', b'["\\\\N"]']
).map(EncodedJson)
ZONES = st.sampled_from(
    [
        UTC,
        timezone(timedelta(hours=5, minutes=30)),
        timezone(-timedelta(hours=11)),
        timezone(-timedelta(hours=3, seconds=7, microseconds=5)),  # isoformat: -03:00:07.000005
    ]
)
AT = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=ZONES
) | st.just(datetime(2026, 3, 14, 9, 0, 0, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))))


@given(
    st.fixed_dictionaries(
        {
            "event_id": st.uuids(),
            "incident_id": TEXT,
            "tenant_id": TEXT,
            "event_type": TEXT,
            "occurred_at": AT,
            "log_partition": st.integers(0, 1000),
            "log_offset": st.integers(0, 2**62),
            "payload": JSON,
            "sanitized": st.booleans(),
        }
    )
)
def test_timeline_lines_are_the_generic_ones(row: dict[str, Any]) -> None:
    assert timeline_line(row) == copy_line(row, COLUMNS["incident_timeline"])


@given(
    st.fixed_dictionaries(
        {
            "event_id": st.uuids(),
            "tenant_id": OPTIONAL,
            "connection_id": OPTIONAL,
            "reason": TEXT,
            "resource": OPTIONAL,
            "action": OPTIONAL,
            "project_slug": OPTIONAL,
            "project_id": OPTIONAL,
            "detail": JSON,
            "received_at": AT,
            "sanitized": st.booleans(),
        }
    )
)
def test_audit_lines_are_the_generic_ones(row: dict[str, Any]) -> None:
    assert audit_line(row) == copy_line(row, COLUMNS["webhook_audit"])


def _incident_row(**values: Any) -> dict[str, Any]:
    return {
        "sets_assignee": values["assignee"] is not None,
        "assignee_order": values["state_order"] if values["assignee"] is not None else None,
        "resolved_at": values["state_changed_at"] if values["status"] == "resolved" else None,
        "opened_at": values["state_changed_at"],
        "status_order": values["state_order"],
        **values,
    }


@given(
    st.builds(
        _incident_row,
        incident_id=TEXT,
        tenant_id=TEXT,
        service_id=TEXT,
        source=TEXT,
        status=st.sampled_from(["open", "resolved", "tab\t"]),
        severity=TEXT,
        title=OPTIONAL,
        culprit=OPTIONAL,
        state_changed_at=AT,
        state_order=st.sampled_from(["0-1-2", "1-00042-ab", "back\\slash", "t\tab"]),
        assignee=st.one_of(st.none(), JSON),
        sentry=JSON,
        first_seen=st.one_of(st.none(), AT),
        last_seen=st.one_of(st.none(), AT),
        event_count=st.one_of(st.none(), st.integers(0, 2**62)),
    )
)
def test_incident_lines_are_the_generic_ones(row: dict[str, Any]) -> None:
    state = fold_incident(None, row)
    assert incident_line(state) == _incident_line_slow(state)
    generic = copy_line({**row, "updated_at": row["state_changed_at"]}, COLUMNS["incidents"])
    assert incident_line(state) == generic


def test_a_naive_datetime_is_refused_not_written_in_the_sessions_zone() -> None:
    row = {
        "event_id": uuid.uuid4(),
        "incident_id": "i",
        "tenant_id": "t",
        "event_type": "incident.opened",
        "occurred_at": datetime(2026, 3, 14, 9, 0),
        "log_partition": 0,
        "log_offset": 1,
        "payload": EncodedJson(b"{}"),
        "sanitized": False,
    }
    with pytest.raises(TypeError, match="naive"):
        timeline_line(row)


ORDERS = st.sampled_from(["1-0001-a", "1-0002-b", "1-0002-c", "0-0009-d", "1-0010-e"])
REFS = st.sampled_from([{}, {"issue_id": "1"}, {"issue_id": "2", "web_url": "https://s/2"}])


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """One incident's rows (``rows._incident``'s shape) in any order: status changes or not,
    assignments or not, refs, counts and times that each merge their own way."""
    out = []
    for _ in range(draw(st.integers(1, 5))):
        order = draw(ORDERS)
        sets_status, sets_assignee = draw(st.booleans()), draw(st.booleans())
        status = draw(st.sampled_from(["open", "resolved", "muted"]))
        at = draw(AT)
        assignee = draw(st.one_of(st.none(), JSON)) if sets_assignee else None
        out.append(
            {
                "incident_id": "i",
                "tenant_id": draw(st.sampled_from(["t", "u"])),
                "service_id": "svc",
                "source": "sentry_issue",
                "status": status,
                "severity": draw(st.sampled_from(["sev1", "sev2"])),
                "title": draw(OPTIONAL),
                "culprit": draw(OPTIONAL),
                "assignee": assignee,
                "sets_assignee": sets_assignee,
                "sentry": draw(REFS),
                "first_seen": draw(st.one_of(st.none(), AT)),
                "last_seen": draw(st.one_of(st.none(), AT)),
                "event_count": draw(st.one_of(st.none(), st.integers(-5, 2**62))),
                "opened_at": at,
                "resolved_at": at if status == "resolved" else None,
                "state_changed_at": at,
                "state_order": order,
                "status_order": order if sets_status else "-" + order,
                "assignee_order": order if sets_assignee else None,
            }
        )
    return out


@given(histories())
def test_the_compact_fold_is_the_live_merge(history: list[dict[str, Any]]) -> None:
    """``fold_incident`` over an incident's rows writes the row ``rows.merge_incident`` (the
    live upsert's rule) makes of them, in any order of arrival."""
    shared = Shared()
    state, merged = None, None
    for row in history:
        encoded = {**row, "sentry": EncodedJson(orjson.dumps(row["sentry"]))}
        state = fold_incident(state, encoded, shared)
        merged = merge_incident(merged, row)
    assert state is not None
    assert merged is not None
    merged = {
        **merged,
        "sentry": EncodedJson(orjson.dumps(merged["sentry"])),
        "updated_at": merged["state_changed_at"],
    }
    assert incident_line(state) == copy_line(merged, COLUMNS["incidents"])
    assert _incident_line_slow(state) == incident_line(state)


@given(st.datetimes(timezones=ZONES))
def test_the_fast_time_text_is_isoformat(at: datetime) -> None:
    """``incident_line``'s times (naive isoformat and the offset's text) are ``isoformat()``,
    in any zone, at any time a datetime holds; one beyond is Unfoldable both ways."""
    utc, offset = _micros(at, 0)
    assert _time_bytes(utc, offset) == _time_text(utc, offset).encode() == at.isoformat().encode()
    beyond = utc + 10**18 if at.year > 5000 else utc - 10**18
    with pytest.raises(Unfoldable):
        _time_text(beyond, offset)
    with pytest.raises(Unfoldable):
        _time_bytes(beyond, offset)
