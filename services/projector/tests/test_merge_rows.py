"""Rows of a merge: the merged-away incident closes, the primary's takes in the links."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from blametrail_common.events import encode, new_event
from blametrail_common.events.incidents import IssueSnapshot, SentryRef
from blametrail_common.events.observations import (
    IncidentAbsorbedV1,
    IncidentMergedV1,
    MovedLink,
)
from blametrail_projector.rows import rows_for

AT = datetime(2026, 3, 16, 8, 0, tzinfo=UTC)


@dataclass
class Record:
    value: bytes
    partition: int = 0
    offset: int = 0


def _common(incident: str, issue: str, status: str) -> dict[str, object]:
    return {
        "incident_id": incident,
        "tenant_id": "t1",
        "service_id": "svc",
        "source": "sentry_issue",
        "severity": "sev2",
        "status_at": AT,
        "sentry": SentryRef(connection_id="c1", issue_id=issue),
        "snapshot": IssueSnapshot(title="boom", status=status),
    }


def test_merged_closes_and_absorbed_keeps_the_observed_status_and_moves_links() -> None:
    merged = IncidentMergedV1(
        **_common("a", "1", "resolved"), into_incident_id="b", into_issue_id="2"
    )
    absorbed = IncidentAbsorbedV1(
        **_common("b", "2", "ignored"),
        merged_incident_id="a",
        merged_issue_id="1",
        moved_links=[MovedLink(external_issue_id="x9", web_url="https://bt/i/a")],
    )
    records = [
        Record(encode(new_event(p, key=p.incident_id)), offset=i)
        for i, p in enumerate((merged, absorbed))
    ]
    rows = rows_for(records)
    assert [(r["incident_id"], r["status"]) for r in rows.incidents] == [
        ("a", "resolved"),
        ("b", "muted"),
    ]
    assert rows.incidents[0]["resolved_at"] == AT
    assert [r["event_type"] for r in rows.timeline] == ["incident.merged", "incident.absorbed"]
    (link,) = rows.links
    assert (link["incident_id"], link["sentry_issue_id"], link["external_issue_id"]) == (
        "b",
        "2",
        "x9",
    )
