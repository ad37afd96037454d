"""``incident_order``'s key is computed its own cheaper way (it runs for every incident event a
projection reads: a key per type kept, no str of the event in between, %-formatting): the very
same key as the definition, for any times in any zone, before the epoch included."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

from blametrail_common.events.incidents import (
    IncidentOpenedV1,
    IssueSnapshot,
    SentryRef,
    _micros,
    incident_order,
)
from hypothesis import given
from hypothesis import strategies as st

ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=11))]
)
AT = st.datetimes(min_value=datetime(1960, 1, 1), max_value=datetime(2200, 1, 1), timezones=ZONES)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@given(
    AT,
    st.sampled_from([timedelta(microseconds=1), timedelta(milliseconds=1), timedelta(seconds=1)]),
)
def test_micros_is_the_timedelta_division(at: datetime, unit: timedelta) -> None:
    assert _micros(at, unit) == max((at - EPOCH) // unit, 0)


@given(
    AT, st.one_of(st.none(), AT), st.one_of(st.none(), st.integers(-5, 10**20)), st.text(max_size=8)
)
def test_the_key_is_the_definitions(
    at: datetime, last_seen: datetime | None, count: int | None, title: str
) -> None:
    event = IncidentOpenedV1(
        incident_id="i",
        tenant_id="t",
        service_id="s",
        source="sentry_issue",
        severity="sev2",
        status_at=at,
        sentry=SentryRef(connection_id="c", issue_id="1"),
        snapshot=IssueSnapshot(title=title, last_seen=last_seen, count=count),
    )
    dumped = event.model_dump_json()
    digest = hashlib.sha256(f"incident.opened:{dumped}".encode()).hexdigest()[:32]
    micros = max((at - EPOCH) // timedelta(microseconds=1), 0)
    millis = 0 if last_seen is None else max((last_seen - EPOCH) // timedelta(milliseconds=1), 0)
    n = min(max(count or 0, 0), 10**19 - 1)
    assert incident_order(event) == f"0-{micros:017d}-{millis:014d}-{n:019d}-0-{digest}"
