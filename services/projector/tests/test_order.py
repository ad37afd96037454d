"""Order safety beyond whole seconds: ``incident_order`` is a strict total order, and the projected
incident row is the same whatever order an issue's webhooks arrive in: pure (``merge_incident``,
property-tested), then through the real projection on Postgres, which must agree with it."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
from aiokafka.structs import ConsumerRecord
from blametrail_common.db import load_migrations, migrate
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
    incident_order,
)
from blametrail_common.events.observations import IncidentAbsorbedV1
from blametrail_devstack.pytest_plugin import Infra, create_database
from blametrail_projector.projection import Projection
from blametrail_projector.rows import merge_incident, rows_for, sets_status
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

T0 = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
INCIDENT = "0b7c6d4e-1f2a-5b3c-8d9e-0a1b2c3d4e5f"
KINDS: dict[str, type[IncidentEvent]] = {
    "opened": IncidentOpenedV1,
    "updated": IncidentUpdatedV1,
    "resolved": IncidentResolvedV1,
    "reopened": IncidentReopenedV1,
    "assigned": IncidentAssignedV1,
    "muted": IncidentMutedV1,
}


def event(
    kind: str,
    second: int = 0,
    *,
    source: str = "sentry_issue",
    last_seen_ms: int | None = None,
    count: int | None = None,
    title: str = "KeyError",
    culprit: str | None = "pricing",
    severity: str = "sev2",
    assignee: str | None = None,
    web_url: bool = False,
    incident_id: str = INCIDENT,
) -> IncidentEvent:
    extra: dict[str, Any] = {
        "updated": {"reason": "alert"},
        "resolved": {"resolution_type": None},
        "assigned": {"assignee": Assignee(type="user", id=assignee) if assignee else None},
        "muted": {"details": {}},
    }.get(kind, {})
    return KINDS[kind](
        incident_id=incident_id,
        tenant_id="t",
        service_id="svc",
        source=source,
        severity=severity,
        status_at=T0 + timedelta(seconds=second),
        sentry=SentryRef(
            connection_id="c",
            issue_id="42",
            short_id="CHECKOUT-1",
            web_url="https://acme.sentry.io/issues/42/" if web_url else None,
        ),
        snapshot=IssueSnapshot(
            title=title,
            culprit=culprit,
            status={"resolved": "resolved", "muted": "ignored"}.get(kind, "unresolved"),
            first_seen=T0 - timedelta(minutes=5),
            last_seen=None if last_seen_ms is None else T0 + timedelta(milliseconds=last_seen_ms),
            count=count,
        ),
        **extra,
    )


class _Record:
    """What ``rows_for`` reads of a ConsumerRecord."""

    def __init__(self, value: bytes) -> None:
        self.value, self.partition, self.offset, self.topic = value, 0, 0, "incident-events"


def _row(e: IncidentEvent) -> dict[str, Any]:
    (row,) = rows_for([_Record(encode(new_event(e, key=e.incident_id, tenant="t")))]).incidents
    return {  # the jsonb parameters as the plain values Postgres gives back
        k: orjson.loads(v.encoded) if k in ("sentry", "assignee") and v is not None else v
        for k, v in row.items()
    }


def project(events: list[IncidentEvent]) -> dict[str, Any] | None:
    state = None
    for e in events:
        state = merge_incident(state, _row(e))
    return state


def test_created_and_resolved_in_one_second_end_resolved_in_both_orders() -> None:
    created, resolved = event("opened", web_url=True), event("resolved")
    for order in ([created, resolved], [resolved, created]):
        state = project(order)
        assert state is not None
        assert state["status"] == "resolved"
        assert state["sentry"]["web_url"] == "https://acme.sentry.io/issues/42/"


def test_a_late_created_never_reopens_an_issue_but_a_late_alert_does() -> None:
    assert project([event("resolved", 0), event("opened", 5)])["status"] == "resolved"  # type: ignore[index]
    alert = [
        event("resolved", 0, source="sentry_metric_alert"),
        event("opened", 5, source="sentry_metric_alert"),
    ]
    assert project(alert)["status"] == "open"  # type: ignore[index]


def action(name: str, at: timedelta, status: str) -> IncidentActionV1:
    """A BlameTrail action accepted at ``T0 + at`` (sub-second: the API's clock)."""
    base = event("opened")
    return IncidentActionV1(
        **{k: getattr(base, k) for k in ("incident_id", "tenant_id", "service_id", "source")},
        severity="sev2",
        status_at=T0 + at,
        sentry=base.sentry,
        snapshot=IssueSnapshot(title="KeyError", culprit="pricing"),
        action_id=f"a-{name}-{at.total_seconds()}",
        action=name,  # type: ignore[arg-type]
        actor=Actor(kind="user", id="u1", name="Ada"),
        status=status,  # type: ignore[arg-type]
        assignee=Assignee(type="user", id="u9") if name == "assign" else None,
    )


def absorbed(second: int, status: str) -> IncidentAbsorbedV1:
    base = event("opened", second)
    return IncidentAbsorbedV1(
        **base.model_dump(exclude={"snapshot"}),
        snapshot=IssueSnapshot(title="KeyError", status=status),
        merged_incident_id="other",
        merged_issue_id="43",
    )


def test_a_later_alert_never_undoes_an_acknowledge_or_a_resolve() -> None:
    """Issue 18 H1, scenario 1: acknowledged at 12:00:00.5, the next event alert (hook 12:00:02)
    reported the issue as it is (an alert carries no status): it showed ``open`` again. It
    updates the facts (title, severity) and nothing else, in every delivery order."""
    opened = event("opened", 0)
    for status, name in (("acknowledged", "acknowledge"), ("resolved", "resolve")):
        act = action(name, timedelta(milliseconds=500), status)
        alert = event("updated", 2, title="KeyError: 'price'", severity="sev1")
        for order in itertools.permutations([opened, act, alert]):
            state = project(list(order))
            assert state is not None
            assert (state["status"], state["title"], state["severity"]) == (
                status,
                "KeyError: 'price'",
                "sev1",
            )
            assert state["state_changed_at"] == T0 + timedelta(milliseconds=500)
            assert (state["resolved_at"] is not None) == (status == "resolved")


def test_a_stale_snapshot_of_an_assignment_or_a_merge_never_sets_the_status() -> None:
    """Scenario 2: resolve at :00.3, Sentry's assignment at :01 still saw ``unresolved`` (our PUT
    landed at :01.5): BlameTrail showed open while Sentry was resolved. The assignment sets the
    assignee; an absorbed merge moves links; neither sets the status."""
    resolve = action("resolve", timedelta(milliseconds=300), "resolved")
    stale = [event("assigned", 1, assignee="u2"), absorbed(1, "unresolved")]
    stale.append(action("assign", timedelta(seconds=1), "open"))  # an assign action: the same
    for later in stale:
        for order in ([event("opened"), resolve, later], [later, resolve, event("opened")]):
            state = project(order)
            assert state is not None
            assert state["status"] == "resolved", later
    state = project([event("opened"), resolve, stale[0]])
    assert state is not None
    assert state["assignee"]["id"] == "u2"


def test_without_any_status_change_the_latest_event_says_the_status() -> None:
    """Only when an incident's status changes are all missing (its ``issue.created`` lost) does
    an alert, an assignment or a merge give the status: the latest of them, any status change
    replaces it."""
    assert project([event("updated", 1)])["status"] == "open"  # type: ignore[index]
    assert project([absorbed(1, "resolved"), event("assigned", 2)])["status"] == "open"  # type: ignore[index]
    assert project([absorbed(3, "resolved"), event("assigned", 2)])["status"] == "resolved"  # type: ignore[index]
    assert project([absorbed(3, "resolved"), event("reopened", 0)])["status"] == "open"  # type: ignore[index]


def test_issue_fields_break_ties_a_regression_after_a_resolve_in_one_second() -> None:
    resolved = event("resolved", last_seen_ms=100, count=3)
    regressed = event("reopened", last_seen_ms=900, count=4)
    assert project([regressed, resolved])["status"] == "open"  # type: ignore[index]
    assert project([resolved, regressed])["status"] == "open"  # type: ignore[index]


def test_the_key_of_an_event_read_back_from_the_log_is_its_own() -> None:
    """Keys depend only on the event, so a replay or a rebuild orders as the live path did;
    an event written before the order existed (the v1 JSON as it was) decodes and orders."""
    e = event("resolved", 3, last_seen_ms=5, count=7)
    again = decode(encode(new_event(e, key=e.incident_id))).payload
    assert incident_order(again) == incident_order(e)
    old = (
        b'{"id":"6c1a3e0a-8a57-4e0e-9a43-4f8f6f0c2a11","type":"incident.resolved","version":1,'
        b'"occurred_at":"2026-03-14T09:00:01Z","produced_at":"2026-03-14T09:00:01Z","tenant":"t",'
        b'"key":"k","payload":{"incident_id":"k","tenant_id":"t","service_id":"svc",'
        b'"source":"sentry_issue","severity":"sev2","status_at":"2026-03-14T09:00:01Z",'
        b'"sentry":{"connection_id":"c"},"snapshot":{"title":"x"},"resolution_type":null}}'
    )
    resolved = decode(old).payload
    assert isinstance(resolved, IncidentResolvedV1)
    assert incident_order(event("opened", 1, incident_id="k")) < incident_order(resolved)
    assert incident_order(resolved) < incident_order(event("reopened", 2, incident_id="k"))


# -- properties --------------------------------------------------------------------------------
@st.composite
def issue_events(draw: st.DrawFn) -> list[IncidentEvent]:
    """2..6 webhooks about one issue (or one alert: the incident id names its source),
    crowded into three seconds (ties), sharing few values."""
    n = draw(st.integers(2, 6))
    source = draw(st.sampled_from(["sentry_issue", "sentry_metric_alert"]))
    out = []
    for i in range(n):
        kind = draw(st.sampled_from(list(KINDS)))
        out.append(
            event(
                kind,
                draw(st.integers(0, 2)),
                source=source,
                last_seen_ms=draw(st.none() | st.sampled_from([0, 250, 999])),
                count=draw(st.none() | st.integers(1, 3)),
                title=draw(st.sampled_from(["A", "B"])),
                culprit=draw(st.sampled_from([None, "x", "y"])),
                severity=draw(st.sampled_from(["sev1", "sev2"])),
                assignee=draw(st.none() | st.sampled_from(["u1", "u2"])),
                web_url=kind == "opened" and i % 2 == 0,
            )
        )
    return out


@settings(max_examples=300, deadline=None)
@given(issue_events(), st.data())
def test_every_delivery_order_gives_the_same_row(
    events: list[IncidentEvent], data: st.DataObject
) -> None:
    expected = project(events)
    if len(events) <= 4:
        orders = [list(p) for p in itertools.permutations(events)]
    else:
        orders = [data.draw(st.permutations(events)) for _ in range(12)]
    for order in orders:
        assert project(order) == expected
    # ... and redelivering any of them (a duplicate) changes nothing
    duplicate = data.draw(st.sampled_from(events))
    assert project([*events, duplicate]) == expected


@settings(max_examples=300, deadline=None)
@given(issue_events())
def test_the_order_is_strict_and_total(events: list[IncidentEvent]) -> None:
    keys = {incident_order(e) for e in events}
    distinct = {(type(e).EVENT_TYPE, e.model_dump_json()) for e in events}
    assert len(keys) == len(distinct)  # equal keys only for the very same event
    # the status is the latest status change's; only when there is none, the latest event's
    changes = [e for e in events if sets_status(e)] or events
    ranked = sorted(changes, key=incident_order)
    assert project([ranked[-1]])["status"] == project(events)["status"]  # type: ignore[index]


# -- through the projection on Postgres ------------------------------------------------------
def _records(events: list[IncidentEvent]) -> list[ConsumerRecord[bytes, bytes]]:
    return [
        ConsumerRecord(
            topic="incident-events",
            partition=0,
            offset=i,
            timestamp=0,
            timestamp_type=0,
            key=e.incident_id.encode(),
            value=encode(new_event(e, key=e.incident_id, tenant="t")),
            checksum=None,
            serialized_key_size=0,
            serialized_value_size=0,
            headers=(),
        )
        for i, e in enumerate(events)
    ]


async def _project(
    conn: psycopg.AsyncConnection[dict[str, Any]], events: list[IncidentEvent], batch: bool
) -> dict[str, Any]:
    """A fresh incident, the events applied (each its own delivery, or one batch), its row."""
    projection = Projection(None)
    await conn.execute("DELETE FROM incidents WHERE incident_id = %s", (INCIDENT,))
    await conn.commit()
    records = _records(events)
    for chunk in [records] if batch else [[r] for r in records]:
        await projection.apply(conn, chunk)
        await conn.commit()
    cur = await conn.execute("SELECT * FROM incidents WHERE incident_id = %s", (INCIDENT,))
    row = await cur.fetchone()
    assert row is not None
    assert projection.refused == 0
    return row


def _comparable(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "incident_id": str(row["incident_id"])}


async def test_resolved_then_created_in_the_same_second_stays_resolved(database_url: str) -> None:
    """The defect: ``issue.resolved`` processed first, then its ``issue.created`` of the same
    Sentry-Hook-Timestamp second; the equal timestamp let the older state win."""
    async with await psycopg.AsyncConnection.connect(database_url, row_factory=dict_row) as conn:
        row = await _project(conn, [event("resolved", 0), event("opened", 0, web_url=True)], False)
    assert row["status"] == "resolved"
    assert row["resolved_at"] is not None
    assert row["sentry"]["web_url"] == "https://acme.sentry.io/issues/42/"  # merged all the same


SETS = [
    [  # the lifecycle within one second, with two assignments and a regression
        event("opened", 0, last_seen_ms=0, count=1, web_url=True),
        event("assigned", 0, last_seen_ms=0, count=1, assignee="u1"),
        event("resolved", 0, last_seen_ms=0, count=1),
        event("reopened", 0, last_seen_ms=250, count=2, culprit=None),
        event("assigned", 0, last_seen_ms=250, count=2, assignee="u2"),
    ],
    [  # alerts across two seconds: opened twice (a normalizer restart), updated, resolved
        event("opened", 0, source="sentry_metric_alert", severity="sev1"),
        event("updated", 1, source="sentry_metric_alert", title="B"),
        event("opened", 1, source="sentry_metric_alert", severity="sev2"),
        event("resolved", 1, source="sentry_metric_alert"),
    ],
    [  # issue 18 H1: an acknowledge, then an alert and a stale assignment, a later resolve
        event("opened", 0, last_seen_ms=0, count=1),
        action("acknowledge", timedelta(milliseconds=500), "acknowledged"),
        event("updated", 2, last_seen_ms=900, count=2, title="B", severity="sev1"),
        event("assigned", 3, last_seen_ms=900, count=2, assignee="u1"),
    ],
    [
        action("resolve", timedelta(milliseconds=300), "resolved"),
        event("assigned", 1, assignee="u2"),
        absorbed(2, "unresolved"),
        event("reopened", 0),
    ],
    [  # same second, the issue's fields alike: muted vs resolved vs an assignment
        event("muted", 2, count=5),
        event("resolved", 2, count=5, title="B"),
        event("assigned", 2, count=5, assignee=None),
        event("opened", 3, count=1),
    ],
]


async def test_every_delivery_order_leaves_the_row_merge_incident_predicts(
    database_url: str,
) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, row_factory=dict_row) as conn:
        for events in SETS:
            expected = project(events)
            assert expected is not None
            rows = []
            for order in itertools.permutations(events):
                rows.append(await _project(conn, list(order), batch=False))
            rows.append(await _project(conn, list(reversed(events)), batch=True))
            rows.append(await _project(conn, [*events, events[0]], batch=True))  # a duplicate
            first = rows[0]
            assert all(r == first for r in rows)
            assert {k: v for k, v in _comparable(first).items() if k != "updated_at"} == expected
            assert first["updated_at"] == first["state_changed_at"]


async def test_an_alert_after_an_acknowledge_leaves_it_acknowledged_on_postgres(
    database_url: str,
) -> None:
    """Issue 18 H1 through the projection: the alert updates the title, not the status."""
    events: list[IncidentEvent] = [
        event("opened", 0),
        action("acknowledge", timedelta(milliseconds=500), "acknowledged"),
        event("updated", 2, title="B"),
    ]
    async with await psycopg.AsyncConnection.connect(database_url, row_factory=dict_row) as conn:
        for batch in (False, True):
            row = await _project(conn, events, batch)
            assert (row["status"], row["title"]) == ("acknowledged", "B")
            assert row["status_order"] == incident_order(events[1])


async def test_rows_projected_before_the_order_keep_the_old_rule_for_their_second(
    infra: Infra,
) -> None:
    """A row written before migration 0015 gets a key of its second only: an event of the
    same second or later replaces its state (as the old guard allowed), an earlier one not."""
    dsn = create_database(infra.server_dsn, f"bt_order_{uuid.uuid4().hex[:6]}")
    migrate(dsn, [m for m in load_migrations() if m.version < 15])
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        await conn.execute(
            "INSERT INTO incidents (incident_id, tenant_id, service_id, source, status, severity,"
            " title, opened_at, state_changed_at, updated_at)"
            " VALUES (%s, 't', 'svc', 'sentry_issue', 'resolved', 'sev2', 'old', %s, %s, %s)",
            (INCIDENT, T0, T0, T0),
        )
        await conn.commit()
        migrate(dsn)
        cur = await conn.execute("SELECT state_order FROM incidents")
        assert await cur.fetchone() == {
            "state_order": "1-01773478800000000-00000000000000-0000000000000000000-0-"
        }
        projection = Projection(None)
        for e in (event("reopened", -1, title="earlier"), event("reopened", 0, title="same")):
            await projection.apply(conn, _records([e]))
            await conn.commit()
        cur = await conn.execute("SELECT status, title FROM incidents")
        assert await cur.fetchone() == {"status": "open", "title": "same"}
