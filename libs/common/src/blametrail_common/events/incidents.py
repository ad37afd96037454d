"""Incident lifecycle events on ``incident-events``, keyed by incident id.

Incident ids are deterministic (UUIDv5 of tenant + Sentry issue id, or of tenant + metric alert
id), and so are event ids (derived from the raw webhook's), so reprocessing the raw log yields
the very same events. Every event carries the full :class:`IssueSnapshot` Sentry sent with it and
``status_at``, the Sentry-side time of the state it reports: webhooks arrive out of order, and the
projection applies a state only if it comes later in :func:`incident_order` than the one it
shows (``status_at`` is whole seconds, so ties are broken by the issue's own fields).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from blametrail_common.events.envelope import EventPayload, event_type

__all__ = [
    "INCIDENT_NAMESPACE",
    "ActionName",
    "Actor",
    "Assignee",
    "IncidentActionV1",
    "IncidentAssignedV1",
    "IncidentEvent",
    "IncidentMutedV1",
    "IncidentOpenedV1",
    "IncidentReopenedV1",
    "IncidentResolvedV1",
    "IncidentUpdatedV1",
    "IssueSnapshot",
    "SentryRef",
    "Severity",
    "incident_id_for",
    "incident_order",
    "severity_for_level",
]

Severity = Literal["sev1", "sev2", "sev3", "sev4", "sev5"]
Source = Literal["sentry_issue", "sentry_metric_alert"]
INCIDENT_NAMESPACE = uuid.UUID("5b1f3c2e-7a4d-4e8f-9c0b-1d2e3f4a5b6c")
_LEVELS: dict[str, Severity] = {
    "fatal": "sev1",
    "error": "sev2",
    "warning": "sev3",
    "info": "sev4",
    "debug": "sev5",
}


def severity_for_level(level: str | None) -> Severity:
    """Sentry level -> severity (unknown levels count as errors)."""
    return _LEVELS.get((level or "").lower(), "sev2")


def incident_id_for(tenant_id: str, kind: Literal["issue", "metric_alert"], sentry_id: str) -> str:
    """The deterministic id of the incident tracking one Sentry issue or metric alert."""
    return str(uuid.uuid5(INCIDENT_NAMESPACE, f"{tenant_id}:{kind}:{sentry_id}"))


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SentryRef(_Part):
    """Where the incident comes from in Sentry."""

    connection_id: str
    org_slug: str | None = None
    project_id: str | None = None
    project_slug: str | None = None
    issue_id: str | None = None
    short_id: str | None = None
    web_url: str | None = None
    metric_alert_id: str | None = None
    alert_rule: str | None = None
    installation_uuid: str | None = None  # the Sentry app installation the webhook came from


class Assignee(_Part):
    type: str
    id: str
    name: str | None = None
    email: str | None = None


class IssueSnapshot(_Part):
    """What Sentry said about the issue (or metric alert) in this webhook."""

    title: str
    culprit: str | None = None
    level: str | None = None
    status: str | None = None
    substatus: str | None = None
    platform: str | None = None
    first_seen: AwareDatetime | None = None
    last_seen: AwareDatetime | None = None
    count: int | None = None
    user_count: int | None = None
    environment: str | None = None
    release: str | None = None


class IncidentEvent(EventPayload):
    """Fields every incident event carries."""

    incident_id: str
    tenant_id: str
    service_id: str
    source: Source
    severity: Severity
    status_at: AwareDatetime
    sentry: SentryRef
    snapshot: IssueSnapshot


@event_type("incident.opened", 1)
class IncidentOpenedV1(IncidentEvent):
    """A new incident (Sentry ``issue.created``, a first alert, a metric alert going critical)."""


@event_type("incident.updated", 1)
class IncidentUpdatedV1(IncidentEvent):
    """New facts about an open incident (an alert fired again, a metric alert changed level)."""

    reason: str


@event_type("incident.resolved", 1)
class IncidentResolvedV1(IncidentEvent):
    resolution_type: str | None = None


@event_type("incident.reopened", 1)
class IncidentReopenedV1(IncidentEvent):
    """The issue is unresolved again (manually, regressed or escalating: see ``snapshot.substatus``)."""


@event_type("incident.assigned", 1)
class IncidentAssignedV1(IncidentEvent):
    assignee: Assignee | None


@event_type("incident.muted", 1)
class IncidentMutedV1(IncidentEvent):
    """Ignored/archived in Sentry; ``details`` are Sentry's ``statusDetails``."""

    details: dict[str, int | str | bool | None]


class Actor(_Part):
    """Who took an action in BlameTrail: a signed-in user or an API key (its id and name)."""

    kind: Literal["user", "api_key"]
    id: str
    name: str


ActionName = Literal["acknowledge", "resolve", "reopen", "assign"]


@event_type("incident.action", 1)
class IncidentActionV1(IncidentEvent):
    """An action taken in BlameTrail (the API's command, folded by the normalizer). ``status_at``
    is when the API accepted it; it is ordered against Sentry's webhooks by
    :func:`incident_order` like any other state. ``status`` is the state it leaves the incident
    in (an assignment keeps the status the incident had); ``assignee`` is set for ``assign``."""

    action_id: str
    action: ActionName
    actor: Actor
    status: Literal["open", "acknowledged", "resolved", "muted"]
    assignee: Assignee | None = None


# -- order ---------------------------------------------------------------------------------------
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Among events of one second that the issue's own fields do not tell apart: facts about an open
# incident, then its assignment, then status changes, a resolve last (a reopen needs a resolve
# before it, so a regression comes with a later lastSeen or count and is ordered by those).
_KIND_RANK = {
    "incident.opened": 0,
    "incident.updated": 1,
    "incident.assigned": 2,
    "incident.reopened": 3,
    "incident.muted": 4,
    "incident.resolved": 5,
}
# BlameTrail's actions rank as the webhook of the same change would.
_ACTION_RANK = {"assign": 2, "acknowledge": 3, "reopen": 3, "resolve": 5}


def _micros(at: datetime | None, unit: timedelta) -> int:
    """``(at - epoch) // unit``, at least 0 (0 for none)."""
    return 0 if at is None else max((at - _EPOCH) // unit, 0)


_MICROSECOND, _MILLISECOND = timedelta(microseconds=1), timedelta(milliseconds=1)
# per event type: what its digest starts with (its name and ``:``), its rank, whether an action
_HEADS: dict[type, tuple[bytes, int, bool]] = {}


def incident_order(event: IncidentEvent, dumped: bytes | None = None) -> str:
    """Where ``event`` stands in its incident's history: of two events of one incident, the one
    with the greater key (compared as strings, byte by byte: ``COLLATE "C"`` in Postgres) is
    the later state. A strict total order: keys are equal only for the very same event.

    The key compares, in turn:

    1. the lifecycle: a Sentry issue's ``opened`` (``issue.created``, sent once) comes before
       everything else about that issue, whatever its timestamp (nothing can be resolved
       before it was created; a delayed ``created`` never reopens a resolved issue). Alerts
       may be ``opened`` again after a restart of the normalizer, so for them it is a kind;
    2. ``status_at`` (Sentry's hook timestamp, whole seconds);
    3. the issue's ``lastSeen`` (to the millisecond: the two serializers Sentry uses print it
       with different precision) and its event ``count``: newer facts, later state;
    4. the kind of event (see ``_KIND_RANK``);
    5. a digest of the event's content, so two different events never tie.

    Old events order by the same rule: everything it reads was always carried. Fixed width,
    so a longer key is never a prefix trick: ``PHASE-STATUS_AT-LAST_SEEN-COUNT-KIND-DIGEST``.

    ``dumped``: the event's ``model_dump_json()`` bytes, when the caller has them already (the
    projection stores them as the timeline's payload): not written a second time.
    """
    cls = type(event)
    head = _HEADS.get(cls)
    if head is None:
        name = getattr(cls, "EVENT_TYPE", "")
        head = _HEADS[cls] = (
            name.encode() + b":",
            _KIND_RANK.get(name, 9),
            issubclass(cls, IncidentActionV1),
        )
    prefix, kind, action = head
    if action:
        kind = _ACTION_RANK[event.action]  # type: ignore[attr-defined]
    phase = 0 if kind == 0 and event.source == "sentry_issue" else 1
    snap = event.snapshot
    if dumped is None:  # model_dump_json()'s own bytes, without the str in between
        dumped = event.__pydantic_serializer__.to_json(event)
    # timedelta division: exact integers (the key's own definition), and the cheapest here;
    # %-formatting: half the work of the f-string's format specs
    fields = (
        phase,
        max((event.status_at - _EPOCH) // _MICROSECOND, 0),
        _micros(snap.last_seen, _MILLISECOND),
        min(max(snap.count or 0, 0), 10**19 - 1),
        kind,
        hashlib.sha256(prefix + dumped).hexdigest()[:32],
    )
    return "%d-%017d-%014d-%019d-%d-%s" % fields  # noqa: UP031
