"""Pure: log records -> rows of the read model. No I/O library; ``projection.py`` writes them.

Every value is made storable first (``pgsafe``): text without NUL or lone surrogates, JSON
without non-finite numbers; a ``jsonb`` value is an :class:`EncodedJson`, encoded once, which
``projection.py`` hands to Postgres as ``jsonb``. Every timestamp comes from the events
themselves, never from the clock, so rebuilding the tables from offset zero gives the very same
rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from blametrail_common.events import DecodeError, decode
from blametrail_common.events.actions import WriteBackEvent
from blametrail_common.events.audit import WebhookAuditedV1
from blametrail_common.events.deploys import IncidentSuspectsV1
from blametrail_common.events.enrichment import (
    IncidentEnrichedV1,
    IncidentEnrichmentFailedV1,
    IncidentLinkedV1,
)
from blametrail_common.events.incidents import (
    IncidentActionV1,
    IncidentAssignedV1,
    IncidentEvent,
    IncidentMutedV1,
    IncidentResolvedV1,
    IncidentUpdatedV1,
    incident_order,
)
from blametrail_common.events.observations import IncidentAbsorbedV1, IncidentMergedV1
from pydantic import BaseModel

from blametrail_projector.pgsafe import pg_jsonb, pg_jsonb_model, pg_text

__all__ = [
    "STATE_COLUMNS",
    "STATUS_COLUMNS",
    "EncodedJson",
    "Rows",
    "merge_incident",
    "rows_for",
    "sets_status",
    "status_order_of",
]


@dataclass(frozen=True, slots=True)
class EncodedJson:
    """The value of a ``jsonb`` column: JSON that Postgres accepts (``pgsafe``), encoded once."""

    encoded: bytes


def _safe_jsonb(value: Any) -> tuple[EncodedJson, bool]:
    """A jsonb parameter Postgres accepts (``pgsafe``), encoded once, and whether it was cleaned."""
    encoded, changed = pg_jsonb(value)
    return EncodedJson(encoded), changed


def _safe_model(model: BaseModel, *, exclude_none: bool = False) -> tuple[EncodedJson, bool]:
    """``_safe_jsonb(model.model_dump(mode="json", ...))``, encoded by pydantic in one pass."""
    encoded, changed = pg_jsonb_model(model, exclude_none=exclude_none)
    return EncodedJson(encoded), changed


_STATUS_OF_SENTRY = {"unresolved": "open", "resolved": "resolved", "ignored": "muted"}


@dataclass
class Rows:
    incidents: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    enriched: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    suspects: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    undecodable: list[tuple[Any, str]] = field(default_factory=list)  # (record, reason)

    def __len__(self) -> int:
        return sum(
            map(
                len,
                (
                    self.incidents,
                    self.timeline,
                    self.enriched,
                    self.failed,
                    self.audit,
                    self.suspects,
                    self.links,
                ),
            )
        )


def sets_status(event: IncidentEvent) -> bool:
    """Whether ``event`` is a change of the incident's status, ordered against the others by
    ``incident_order``: opened, resolved, reopened, muted, merged and BlameTrail's status
    actions. An alert that fired again (``incident.updated``), an assignment (Sentry's or an
    ``assign`` action) and an absorbed merge carry a status only as seen at some moment (a
    snapshot, possibly stale, or none at all), so they never undo an acknowledge or a resolve:
    their status stands only while the incident has no status change at all."""
    by_type = _kind_of(type(event)).sets_status
    return by_type if by_type is not None else event.action != "assign"  # type: ignore[attr-defined]


# A status order below every ``incident_order`` key (they start with a digit): the status of an
# event that does not set it (``sets_status``) gives way to any event that does.
_NO_STATUS_CHANGE = "-"


def status_for(event: IncidentEvent) -> str:
    by_type = _kind_of(type(event)).status
    if by_type is not None:
        return by_type
    if isinstance(event, IncidentActionV1):
        return event.status
    # absorbed (took in a merged issue) or assigned: the status observed
    return _STATUS_OF_SENTRY.get(event.snapshot.status or "", "open")


class _Kind(NamedTuple):
    """What the type of an incident event decides alone (None: each event's fields decide)."""

    status: str | None  # ``status_for``
    sets_status: bool | None  # ``sets_status``
    sets_assignee: bool | None  # ``_sets_assignee``
    assigns: bool  # it has an ``assignee`` field
    moves_links: bool  # an absorbed merge: the merged issue's links move here


def _kind(cls: type) -> _Kind:
    """``cls``'s :class:`_Kind`: the first of these bases it is a subclass of decides."""
    action = issubclass(cls, IncidentActionV1)
    if action:
        status = None  # the status the action leaves
    elif issubclass(cls, IncidentResolvedV1 | IncidentMergedV1):  # merged: closed into another
        status = "resolved"
    elif issubclass(cls, IncidentAbsorbedV1):  # took in a merged issue: the status observed
        status = None
    elif issubclass(cls, IncidentMutedV1):
        status = "muted"
    elif issubclass(cls, IncidentAssignedV1):  # the status observed
        status = None
    else:
        status = "open"
    snapshot_only = issubclass(cls, IncidentUpdatedV1 | IncidentAssignedV1 | IncidentAbsorbedV1)
    assigned = issubclass(cls, IncidentAssignedV1)
    return _Kind(
        status=status,
        sets_status=None if action else not snapshot_only,
        sets_assignee=True if assigned else None if action else False,
        assigns=assigned or action,
        moves_links=issubclass(cls, IncidentAbsorbedV1),
    )


_KINDS: dict[type, _Kind] = {}


def _kind_of(cls: type) -> _Kind:
    kind = _KINDS.get(cls)
    if kind is None:
        kind = _KINDS[cls] = _kind(cls)
    return kind


def rows_for(records: list[Any]) -> Rows:
    """Rows for a batch of ``ConsumerRecord``s of any of the projection's topics."""
    out = Rows()
    for record in records:
        try:
            env = decode(record.value)
        except DecodeError as exc:
            out.undecodable.append((record, str(exc)))
            continue
        p = env.payload
        add = _ADD.get(type(p))
        if add is None:  # the first of its type: by ``isinstance``, then kept
            add = next((f for kind, f in _BY_BASE if isinstance(p, kind)), _not_projected)
            _ADD[type(p)] = add
        add(out, env, p, record)
    return out


def _add_incident(out: Rows, env: Any, p: IncidentEvent, record: Any) -> None:
    # one dump of the event: its order's digest and the timeline's payload (``pg_jsonb_model``)
    dumped = p.__pydantic_serializer__.to_json(p)
    # Written, so no string of it holds a lone surrogate (pydantic cannot write one); without a
    # ``\u0000`` in it, none holds a NUL either: every text of it is storable as it is.
    clean = b"\\u0000" not in dumped
    out.incidents.append(_incident(p, dumped, clean))
    if _kind_of(type(p)).moves_links:  # the merged issue's links move here
        out.links.extend(_moved_links(p))  # type: ignore[arg-type]
    if clean:
        payload, changed = EncodedJson(dumped), False
    else:
        payload, changed = _safe_model(p)
    out.timeline.append(
        {
            "event_id": env.id,
            "incident_id": p.incident_id,
            "tenant_id": p.tenant_id,
            "event_type": env.type,
            "occurred_at": p.status_at,
            "log_partition": record.partition,
            "log_offset": record.offset,
            "payload": payload,
            "sanitized": changed,
        }
    )


def _add_writeback(out: Rows, env: Any, p: WriteBackEvent, record: Any) -> None:
    out.timeline.append(_writeback(env, p, record))


def _add_enriched(out: Rows, env: Any, p: IncidentEnrichedV1, _record: Any) -> None:
    record_json, changed = _safe_model(p)
    out.enriched.append(
        {
            "incident_id": p.incident_id,
            "tenant_id": p.tenant_id,
            "event_id": env.id,
            "status": "enriched",
            "reason": None,
            "record": record_json,
            "fetched_at": p.fetched_at,
            "sanitized": changed,
        }
    )


def _add_failed(out: Rows, env: Any, p: IncidentEnrichmentFailedV1, _record: Any) -> None:
    out.failed.append(
        {
            "incident_id": p.incident_id,
            "tenant_id": p.tenant_id,
            "event_id": env.id,
            "status": "failed",
            "reason": pg_text(p.reason),
            "record": None,
            "fetched_at": p.failed_at,
            "sanitized": False,
        }
    )


def _add_audit(out: Rows, env: Any, p: WebhookAuditedV1, _record: Any) -> None:
    out.audit.append(_audit(env.id, p))


def _add_linked(out: Rows, _env: Any, p: IncidentLinkedV1, _record: Any) -> None:
    out.links.append(
        {
            "incident_id": p.incident_id,
            "connection_id": p.connection_id,
            "sentry_issue_id": p.sentry_issue_id,
            "external_issue_id": p.external_issue_id,
            "web_url": pg_text(p.sentry_web_url),
            "linked_at": p.linked_at,
        }
    )


def _add_suspects(out: Rows, env: Any, p: IncidentSuspectsV1, _record: Any) -> None:
    suspects, _ = _safe_jsonb([s.model_dump(mode="json") for s in p.suspects])
    out.suspects.append(
        {
            "incident_id": p.incident_id,
            "tenant_id": p.tenant_id,
            "event_id": env.id,
            "computed_at": p.computed_at,
            "candidates": p.candidates,
            "suspects": suspects,
        }
    )


def _not_projected(out: Rows, env: Any, _p: Any, record: Any) -> None:
    out.undecodable.append((record, f"event {env.type} is not for the projection"))


_Add = Callable[[Rows, Any, Any, Any], None]
# What each kind of payload adds: the first base class it is an instance of decides, once per
# type (``_ADD`` keeps the answer: a batch looks its records' types up instead).
_BY_BASE: tuple[tuple[type, _Add], ...] = (
    (IncidentEvent, _add_incident),
    (WriteBackEvent, _add_writeback),
    (IncidentEnrichedV1, _add_enriched),
    (IncidentEnrichmentFailedV1, _add_failed),
    (WebhookAuditedV1, _add_audit),
    (IncidentLinkedV1, _add_linked),
    (IncidentSuspectsV1, _add_suspects),
)
_ADD: dict[type, _Add] = {}


def _writeback(env: Any, p: WriteBackEvent, record: Any) -> dict[str, Any]:
    """A write-back to Sentry on the incident's timeline: never a state change."""
    payload, changed = _safe_model(p)
    return {
        "event_id": env.id,
        "incident_id": p.incident_id,
        "tenant_id": p.tenant_id,
        "event_type": env.type,
        "occurred_at": p.at,
        "log_partition": record.partition,
        "log_offset": record.offset,
        "payload": payload,
        "sanitized": changed,
    }


def _sets_assignee(p: IncidentEvent) -> bool:
    by_type = _kind_of(type(p)).sets_assignee
    return by_type if by_type is not None else p.action == "assign"  # type: ignore[attr-defined]


def _incident(p: IncidentEvent, dumped: bytes | None = None, clean: bool = False) -> dict[str, Any]:
    """The incidents row of ``p``. ``dumped``: its ``to_json`` bytes when the caller has them;
    ``clean``: no text of ``p`` needs ``pgsafe`` (they have no ``\\u0000``, see ``_add_incident``)."""
    s = p.snapshot
    kind = _kind_of(type(p))
    title: str | None
    culprit: str | None
    if clean:  # what ``_safe_model`` and ``pg_text`` give a model and texts with nothing to replace
        sentry = EncodedJson(p.sentry.__pydantic_serializer__.to_json(p.sentry, exclude_none=True))
        title, culprit = s.title, s.culprit
    else:
        sentry = _safe_model(p.sentry, exclude_none=True)[0]
        title, culprit = pg_text(s.title), pg_text(s.culprit)
    sets_assignee = kind.sets_assignee
    if sets_assignee is None:
        sets_assignee = p.action == "assign"  # type: ignore[attr-defined]
    assignee = None
    if kind.assigns and p.assignee is not None:  # type: ignore[attr-defined]
        assignee = _safe_jsonb(p.assignee.model_dump(mode="json"))[0]  # type: ignore[attr-defined]
    status = kind.status
    if status is None:
        status = status_for(p)
    sets = kind.sets_status
    if sets is None:
        sets = p.action != "assign"  # type: ignore[attr-defined]
    order = incident_order(p, dumped)
    at = p.status_at
    return {
        "incident_id": p.incident_id,
        "tenant_id": p.tenant_id,
        "service_id": p.service_id,
        "source": p.source,
        "status": status,
        "severity": p.severity,
        "title": title,
        "culprit": culprit,
        "assignee": assignee,
        "sets_assignee": sets_assignee,
        "sentry": sentry,
        "first_seen": s.first_seen,
        "last_seen": s.last_seen,
        "event_count": s.count,
        "opened_at": at,
        "resolved_at": at if status == "resolved" else None,
        "state_changed_at": at,
        "state_order": order,
        "status_order": order if sets else _NO_STATUS_CHANGE + order,
        "assignee_order": order if sets_assignee else None,
    }


# The status the latest status change (by ``incident_order``, ``sets_status``) sets, with its
# times (``status_order``); the facts the latest event of any kind shows (``state_order``);
# ``assignee`` is the latest assignment's; the other columns merge what every event saw. So
# the row is the same whatever order the events arrive in (the incidents' merge in
# ``projection.MERGES`` is this, in SQL). A row projected before migration 0026 has no
# ``status_order``: its status came with its ``state_order``.
STATUS_COLUMNS = ("status", "resolved_at", "state_changed_at")
STATE_COLUMNS = ("severity", "title", "culprit")


def status_order_of(row: dict[str, Any]) -> str:
    """The row's ``status_order`` (``COALESCE(status_order, state_order)`` in SQL)."""
    order = row.get("status_order")
    return order if order is not None else row["state_order"]  # type: ignore[no-any-return]


def merge_incident(cur: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The incident row after applying the row of one more event (``_incident``); pure, and
    exactly what the projection's upsert does (its tests hold the two to each other)."""
    if cur is None:
        return {k: v for k, v in new.items() if k != "sets_assignee"}
    out = dict(cur)
    newer = cur["state_order"] < new["state_order"]
    if newer:
        out.update({c: new[c] for c in STATE_COLUMNS})
        out["state_order"] = new["state_order"]
    if status_order_of(cur) < new["status_order"]:
        out.update({c: new[c] for c in STATUS_COLUMNS})
        out["status_order"] = new["status_order"]
    if new["sets_assignee"] and (
        cur["assignee_order"] is None or cur["assignee_order"] < new["assignee_order"]
    ):
        out["assignee"], out["assignee_order"] = new["assignee"], new["assignee_order"]
    # refs: the later event's value wins a key both name (they name the same issue)
    older_refs, newer_refs = (cur, new) if newer else (new, cur)
    out["sentry"] = {**older_refs["sentry"], **newer_refs["sentry"]}
    for column, pick in (
        ("first_seen", min),
        ("last_seen", max),
        ("event_count", max),
        ("opened_at", min),
    ):
        values = [v for v in (cur[column], new[column]) if v is not None]
        out[column] = pick(values) if values else None
    return out


def _moved_links(p: IncidentAbsorbedV1) -> list[dict[str, Any]]:
    return [
        {
            "incident_id": p.incident_id,
            "connection_id": p.sentry.connection_id,
            "sentry_issue_id": p.sentry.issue_id or "",
            "external_issue_id": link.external_issue_id,
            "web_url": pg_text(link.web_url),
            "linked_at": p.status_at,
        }
        for link in p.moved_links
        if p.sentry.issue_id
    ]


def _audit(event_id: Any, p: WebhookAuditedV1) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "tenant_id": p.tenant_id,
        "connection_id": p.connection_id,
        "reason": p.reason,
        "resource": pg_text(p.resource),
        "action": pg_text(p.action),
        "project_slug": pg_text(p.project_slug),
        "project_id": p.project_id,
        "detail": _safe_jsonb(
            {
                "detail": p.detail,
                "raw_event_id": p.raw_event_id,
                "body_sha256": p.body_sha256,
                "installation_uuid": p.installation_uuid,
            }
        )[0],
        "received_at": p.received_at,
        "sanitized": False,
    }
