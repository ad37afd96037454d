"""Pure: the suspects worker keeps an incident's later state by ``incident_order``, as the
projection does, so webhooks of one second in either order leave it the same incident."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from blametrail_common.events.incidents import (
    IncidentOpenedV1,
    IncidentResolvedV1,
    IssueSnapshot,
    SentryRef,
)
from blametrail_suspects.state import SuspectState

T0 = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


def test_the_state_kept_is_the_later_one_whatever_the_delivery_order() -> None:
    common = {
        "incident_id": "i-1",
        "tenant_id": "t",
        "service_id": "svc",
        "source": "sentry_issue",
        "severity": "sev2",
        "status_at": T0,  # one Sentry-Hook-Timestamp second for both
        "sentry": SentryRef(connection_id="c", issue_id="1"),
    }
    created = IncidentOpenedV1(**common, snapshot=IssueSnapshot(title="KeyError", count=1))
    resolved = IncidentResolvedV1(
        **common, snapshot=IssueSnapshot(title="KeyError", status="resolved", count=1)
    )
    for order in itertools.permutations([created, resolved]):
        state = SuspectState()
        for event in order:
            state.on_incident(event)
        assert state.incidents["i-1"].event == resolved
