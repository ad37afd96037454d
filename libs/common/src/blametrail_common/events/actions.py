"""Incident actions taken in BlameTrail and their write-back to Sentry.

- ``incident-commands`` (key: incident id) carries :class:`IncidentActionRequestedV1`, written by
  the API through its outbox. The normalizer, the single writer of ``incident-events``, folds each
  into an :class:`~blametrail_common.events.incidents.IncidentActionV1` (event id derived from the
  action id, so a redelivered command is the very same event).
- ``incident-writebacks`` (key: incident id) carries what happened when the sync worker mirrored
  a state onto the Sentry issue (:class:`WriteBackEvent` subclasses): requested, confirmed by
  Sentry's answer, refused (403/404/400: for good), failed (Sentry did not answer after the
  shared client's retries: dead-lettered), and echoed (Sentry's webhook for our own change,
  recognised by the normalizer: a confirmation, never a state change). The projection puts every
  one on the incident's timeline; none changes the incident's state.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import AwareDatetime

from blametrail_common.events.envelope import EventPayload, event_type
from blametrail_common.events.incidents import (
    ActionName,
    Actor,
    Assignee,
    IssueSnapshot,
    SentryRef,
    Severity,
)

__all__ = [
    "ACTIONS_NAMESPACE",
    "IncidentActionRequestedV1",
    "SentryStatus",
    "WriteBackConfirmedV1",
    "WriteBackEchoedV1",
    "WriteBackEvent",
    "WriteBackFailedV1",
    "WriteBackRefusedV1",
    "WriteBackRequestedV1",
    "derived_id",
    "sentry_status_for",
]

ACTIONS_NAMESPACE = uuid.UUID("0b7f6d0e-93a1-4c55-9d2e-5a8f1c3b7e41")
Source = Literal["sentry_issue", "sentry_metric_alert"]


def derived_id(*parts: str) -> uuid.UUID:
    """A deterministic event id from the ids it derives from (replays give the same id)."""
    return uuid.uuid5(ACTIONS_NAMESPACE, ":".join(parts))


@event_type("incident.action_requested", 1)
class IncidentActionRequestedV1(EventPayload):
    """An action the API accepted (on ``incident-commands``). It carries the incident as the API
    saw it, so the normalizer can fold it into an incident event without a read model."""

    action_id: str
    incident_id: str
    tenant_id: str
    action: ActionName
    actor: Actor
    requested_at: AwareDatetime
    status_after: Literal["open", "acknowledged", "resolved", "muted"]
    assignee: Assignee | None = None
    service_id: str
    source: Source
    severity: Severity
    sentry: SentryRef
    snapshot: IssueSnapshot


SentryStatus = tuple[str, str | None]
"""``(status, substatus)`` as Sentry's issue update takes them."""

_SENTRY_OF_STATUS: dict[str, SentryStatus] = {
    "resolved": ("resolved", None),
    "open": ("unresolved", None),
    # Acknowledge is mirrored as Sentry's "ongoing" substatus (someone is on it), not as an
    # assignment: an integration's token cannot be an assignee, and an assignment says *who*.
    "acknowledged": ("unresolved", "ongoing"),
}


def sentry_status_for(status: str) -> SentryStatus | None:
    """The Sentry issue state that mirrors a BlameTrail status; ``None`` for states that are not
    written back (muted: Sentry's ignore needs details BlameTrail does not have)."""
    return _SENTRY_OF_STATUS.get(status)


class WriteBackEvent(EventPayload):
    """Fields of every write-back event: which write-back, of which incident, to what state."""

    writeback_id: str
    incident_id: str
    tenant_id: str
    connection_id: str
    issue_id: str
    status: str
    """The BlameTrail status written back (``resolved``, ``open``, ``acknowledged``)."""
    sentry_status: str
    sentry_substatus: str | None = None
    cause: Literal["action", "repair"]
    """``action``: mirrors a BlameTrail action; ``repair``: puts back the state both sides agreed
    on after our write-back overwrote a later Sentry change (the race rule, README)."""
    action_id: str | None = None
    at: AwareDatetime


@event_type("incident.writeback.requested", 1)
class WriteBackRequestedV1(WriteBackEvent):
    """About to ``PUT`` the issue (sent, and acknowledged by the broker, before the call)."""


@event_type("incident.writeback.confirmed", 1)
class WriteBackConfirmedV1(WriteBackEvent):
    """Sentry answered the ``PUT`` with the issue in the state written."""


@event_type("incident.writeback.refused", 1)
class WriteBackRefusedV1(WriteBackEvent):
    """Sentry answered no (403: the token lacks ``event:write``; 404; other 4xx). Not retried;
    the BlameTrail action stands."""

    reason: str
    http_status: int | None = None


@event_type("incident.writeback.failed", 1)
class WriteBackFailedV1(WriteBackEvent):
    """Sentry did not answer after the shared client's retries; the record is dead-lettered
    (``incident-events-dlq``) for ``blametrail dlq redrive``, never retried forever."""

    reason: str


@event_type("incident.writeback.echoed", 1)
class WriteBackEchoedV1(WriteBackEvent):
    """Sentry's webhook for our own change (an application actor, matching a pending write-back):
    a confirmation on the timeline, not a state change."""

    webhook_action: str
    actor_id: str | None = None
    raw_event_id: str
