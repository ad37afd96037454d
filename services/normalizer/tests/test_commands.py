"""Pure parts of the commands agent: a command folds into one deterministic incident event; the
echo of our own write-back becomes a confirmation, anything else passes (issue 18 §1-2)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from blametrail_common.events import WebhookReceivedV1, body_sha256, new_event
from blametrail_common.events.actions import (
    IncidentActionRequestedV1,
    WriteBackEchoedV1,
    WriteBackEvent,
    WriteBackRefusedV1,
    WriteBackRequestedV1,
)
from blametrail_common.events.incidents import (
    Actor,
    IncidentActionV1,
    IncidentResolvedV1,
    IssueSnapshot,
    SentryRef,
    incident_order,
)
from blametrail_normalizer.commands import fold, recognise_echoes
from blametrail_normalizer.normalize import Normalized

AT = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
INCIDENT = str(uuid.uuid4())


def _command(action: str = "resolve", after: str = "resolved") -> Any:
    payload = IncidentActionRequestedV1(
        action_id=str(uuid.uuid4()),
        incident_id=INCIDENT,
        tenant_id="t1",
        action=action,  # type: ignore[arg-type]
        actor=Actor(kind="user", id="u1", name="Mia"),
        requested_at=AT,
        status_after=after,  # type: ignore[arg-type]
        service_id="s1",
        source="sentry_issue",
        severity="sev2",
        sentry=SentryRef(connection_id="c1", issue_id="42"),
        snapshot=IssueSnapshot(title="KeyError"),
    )
    return new_event(payload, key=INCIDENT, tenant="t1")


def test_a_command_folds_into_the_same_incident_event_every_time() -> None:
    cmd = _command()
    one, two = fold(cmd), fold(cmd)
    assert one.id == two.id
    assert isinstance(one.payload, IncidentActionV1)
    assert (one.payload.status, one.payload.actor.id, one.payload.status_at) == (
        "resolved",
        "u1",
        AT,
    )
    assert one.key == INCIDENT


def test_an_action_orders_against_a_webhook_by_time_first() -> None:
    action = fold(_command()).payload
    later = _resolved_event(AT + timedelta(seconds=1), "unresolved")
    earlier = _resolved_event(AT - timedelta(seconds=1), "unresolved")
    assert incident_order(earlier) < incident_order(action) < incident_order(later)


def _resolved_event(at: datetime, status: str = "resolved") -> IncidentResolvedV1:
    return IncidentResolvedV1(
        incident_id=INCIDENT,
        tenant_id="t1",
        service_id="s1",
        source="sentry_issue",
        severity="sev2",
        status_at=at,
        sentry=SentryRef(connection_id="c1", issue_id="42"),
        snapshot=IssueSnapshot(title="KeyError", status=status),
    )


def _raw(actor: dict[str, Any]) -> Any:
    body = orjson.dumps({"action": "resolved", "data": {}, "actor": actor}).decode()
    hook = WebhookReceivedV1(
        connection_id="c1",
        resource="issue",
        action="resolved",
        installation_uuid="inst",
        signature_header="Sentry-Hook-Signature",
        request_id=None,
        hook_timestamp=str(int(AT.timestamp())),
        received_at=AT,
        body_sha256=body_sha256(body.encode()),
        body=body,
    )
    return new_event(hook, key="42")


class _Table(dict[str, WriteBackEvent]):
    pass


def _pending(cls: type[WriteBackEvent] = WriteBackRequestedV1, **extra: Any) -> WriteBackEvent:
    return cls(
        writeback_id="w1",
        incident_id=INCIDENT,
        tenant_id="t1",
        connection_id="c1",
        issue_id="42",
        status="resolved",
        sentry_status="resolved",
        cause="action",
        at=AT - timedelta(seconds=1),
        **extra,
    )


def _out() -> Normalized:
    event = _resolved_event(AT)
    return Normalized(events=[("incident-events", new_event(event, key=INCIDENT))])


def test_our_apps_change_matching_the_pending_write_back_is_a_confirmation() -> None:
    app = {"type": "application", "id": "app-uuid", "name": "BlameTrail"}
    raw = _raw(app)
    out = recognise_echoes(raw, _out(), _Table({INCIDENT: _pending()}))
    ((topic, env),) = out.events
    assert topic == "incident-writebacks"
    assert isinstance(env.payload, WriteBackEchoedV1)
    assert (env.payload.writeback_id, env.payload.actor_id) == ("w1", "app-uuid")
    again = recognise_echoes(raw, _out(), _Table({INCIDENT: _pending()}))
    assert again.events[0][1].id == env.id  # deterministic: a redelivery is the same event


def test_anything_else_stays_a_state_change() -> None:
    app = {"type": "application", "id": "app-uuid", "name": "BlameTrail"}
    cases = [
        (_raw({"type": "user", "id": 7, "name": "Ann"}), _Table({INCIDENT: _pending()})),
        (
            _raw({"type": "application", "id": "sentry", "name": "Sentry"}),
            _Table({INCIDENT: _pending()}),
        ),
        (_raw(app), _Table()),  # no write-back pending
        (_raw(app), _Table({INCIDENT: _pending(WriteBackRefusedV1, reason="403")})),
        (
            _raw(app),
            _Table({INCIDENT: _pending().model_copy(update={"sentry_status": "unresolved"})}),
        ),
        (
            _raw(app),
            _Table({INCIDENT: _pending().model_copy(update={"at": AT + timedelta(minutes=1)})}),
        ),
    ]
    for raw, table in cases:
        out = recognise_echoes(raw, _out(), table)
        assert [t for t, _ in out.events] == ["incident-events"], (raw.payload.body, table)
