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
from blametrail_common.settings import KafkaSettings
from blametrail_normalizer.commands import ECHO_WINDOW, Pending, WriteBacks, fold, recognise_echoes
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
    """Each incident's one recent write-back, not echoed yet."""

    def recent(self, incident_id: str) -> list[Pending]:
        return [Pending(self[incident_id])] if incident_id in self else []


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


APP = {"type": "application", "id": "app-uuid", "name": "BlameTrail"}


def _writebacks(now: list[datetime]) -> WriteBacks:
    """Recent write-backs fed by hand (as the table would), on a clock the test moves."""
    return WriteBacks(KafkaSettings(), lookback=timedelta(hours=1), clock=lambda: now[0])


def _raw_at(at: datetime, actor: dict[str, Any] = APP) -> Any:
    raw = _raw(actor)
    return raw.model_copy(update={"id": uuid.uuid4()})  # another webhook, same content


def _resolved_out(at: datetime) -> Normalized:
    return Normalized(events=[("incident-events", new_event(_resolved_event(at), key=INCIDENT))])


def _kinds(out: Normalized) -> list[str]:
    return [type(e.payload).__name__ for _, e in out.events]


def test_a_write_back_is_echoed_once_and_a_later_alike_change_is_real() -> None:
    now = [AT]
    wbs = _writebacks(now)
    wbs.note(_pending())  # requested at AT - 1 s
    first = _raw_at(AT)
    assert _kinds(wbs.recognise(first, _resolved_out(AT))) == ["WriteBackEchoedV1"]
    # Another resolve by an application a minute later (after a reopen, or another app's): no
    # write-back of ours is left to echo, so it is a state change.
    later = _raw_at(AT + timedelta(minutes=1))
    out = wbs.recognise(later, _resolved_out(AT + timedelta(minutes=1)))
    assert _kinds(out) == ["IncidentResolvedV1"]
    # The first webhook redelivered (its offset not committed yet) is the same echo again.
    again = wbs.recognise(first, _resolved_out(AT))
    assert _kinds(again) == ["WriteBackEchoedV1"]
    # The echo read back from incident-writebacks changes nothing.
    wbs.note(again.events[0][1].payload)
    assert _kinds(wbs.recognise(later, _resolved_out(AT + timedelta(minutes=1)))) == [
        "IncidentResolvedV1"
    ]


def test_a_read_back_echo_marks_its_write_back_echoed() -> None:
    wbs = _writebacks([AT])
    wbs.note(_pending())
    echo = recognise_echoes(_raw_at(AT), _resolved_out(AT), wbs).events[0][1].payload
    assert isinstance(echo, WriteBackEchoedV1)
    wbs.note(echo)  # e.g. another replica made it: this one learns it from the topic
    out = wbs.recognise(_raw_at(AT), _resolved_out(AT))
    assert _kinds(out) == ["IncidentResolvedV1"]


def test_each_of_several_write_backs_is_echoed_in_turn() -> None:
    """A resolve and, after a repair, another resolve: two write-backs of one incident; their two
    echoes are two confirmations, the earliest write-back first, and a third resolve is real."""
    wbs = _writebacks([AT])
    one = _pending()
    two = one.model_copy(update={"writeback_id": "w2", "cause": "repair", "at": AT})
    wbs.note(one)
    wbs.note(two)
    got = [wbs.recognise(_raw_at(AT), _resolved_out(AT)).events[0][1].payload for _ in range(3)]
    assert [getattr(p, "writeback_id", None) for p in got] == ["w1", "w2", None]


def test_a_matching_change_long_after_the_write_back_is_real() -> None:
    wbs = _writebacks([AT])
    wbs.note(_pending())
    much_later = AT + ECHO_WINDOW + timedelta(seconds=1)
    assert _kinds(wbs.recognise(_raw_at(much_later), _resolved_out(much_later))) == [
        "IncidentResolvedV1"
    ]
    within = AT + ECHO_WINDOW - timedelta(seconds=2)
    assert _kinds(wbs.recognise(_raw_at(within), _resolved_out(within))) == ["WriteBackEchoedV1"]


def test_another_application_is_not_us_where_our_app_is_known() -> None:
    wbs = _writebacks([AT])
    wbs.note(_pending())
    other = {"type": "application", "id": "other-app", "name": "PagerThing"}
    out = wbs.recognise(_raw_at(AT, other), _resolved_out(AT), app_uuid="app-uuid")
    assert _kinds(out) == ["IncidentResolvedV1"]
    ours = wbs.recognise(_raw_at(AT), _resolved_out(AT), app_uuid="app-uuid")
    assert _kinds(ours) == ["WriteBackEchoedV1"]


def test_refused_or_failed_write_backs_are_not_echoed_and_old_ones_are_forgotten() -> None:
    now = [AT]
    wbs = _writebacks(now)
    wbs.note(_pending())
    wbs.note(_pending(WriteBackRefusedV1, reason="403"))  # the same write-back, refused
    assert _kinds(wbs.recognise(_raw_at(AT), _resolved_out(AT))) == ["IncidentResolvedV1"]
    wbs.note(_pending().model_copy(update={"writeback_id": "w9"}))
    assert len(wbs) == 2
    now[0] = AT + timedelta(hours=2)
    wbs.note(_pending().model_copy(update={"writeback_id": "w10", "at": now[0]}))
    assert len(wbs) == 1  # the two of two hours ago are gone from memory
