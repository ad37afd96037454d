"""Incident actions (acknowledge, resolve, reopen, assign): checked, recorded, sent as a command.

:func:`decide` is pure: what an action does from the incident's current status, or why it may
not (a :class:`Refused`, answered 409). :class:`IncidentActionStore.act` runs it under a
per-incident advisory lock, so two concurrent actions on one incident are checked one after the
other; it writes the action row and the command (``incident-commands``) in one transaction
through the outbox.

An incident Sentry merged into another (``incident.merged`` on its timeline: the reconciler
found its issue answered for by another) takes no action: it is closed, its issue lives on in
the other incident, and an action here would be mirrored onto the merged-away issue id (a 409
naming the incident it was merged into).

The status checked is the newer of the projection's (``incidents.status`` as of
``state_changed_at``) and the last action accepted here (the projection shows an action only
once the normalizer and the projector have folded it). Idempotency: a request with an
``Idempotency-Key`` its caller (the user or API key) already used on this incident gets the first
answer again and no new command (another caller's same key is not theirs: migration 0036);
without a key, the state check makes the same action twice one state change (the second is a 409).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from blametrail_common.events import new_event
from blametrail_common.events.actions import IncidentActionRequestedV1
from blametrail_common.events.incidents import ActionName, Actor, Assignee, IssueSnapshot, SentryRef
from psycopg.types.json import Jsonb

from blametrail_mappings_api.errors import Conflict, NotFound
from blametrail_mappings_api.store import db
from blametrail_mappings_api.store.db import Conn, Pool, Row
from blametrail_mappings_api.store.outbox import enqueue

__all__ = ["Accepted", "IncidentActionStore", "Refused", "decide"]

_LOCK_SPACE = 0x6274_6163  # "btac": advisory locks of incident actions


class Refused(Conflict):
    """The action is not allowed in the incident's current state (a 409 naming the status)."""

    def __init__(self, message: str, status: str, merged_into: str | None = None) -> None:
        existing = {"status": status}
        if merged_into is not None:
            existing["merged_into"] = merged_into
        super().__init__(message, existing)
        self.status = status


@dataclass(frozen=True)
class Accepted:
    action_id: str
    incident_id: str
    action: str
    status: str
    assignee: dict[str, Any] | None
    actor: dict[str, str]
    requested_at: datetime
    replayed: bool


_ALLOWED: dict[str, tuple[frozenset[str], str]] = {
    # action -> (statuses it applies to, status after)
    "acknowledge": (frozenset({"open"}), "acknowledged"),
    "resolve": (frozenset({"open", "acknowledged", "muted"}), "resolved"),
    "reopen": (frozenset({"resolved", "muted"}), "open"),
}


def decide(
    action: ActionName, status: str, assignee: dict[str, Any] | None, to: Assignee | None
) -> str:
    """Pure: the status ``action`` leaves an incident in that is ``status`` now (assigned to
    ``assignee``), or :class:`Refused`. An assignment keeps the status."""
    if action == "assign":
        assert to is not None
        if assignee is not None and (assignee.get("type"), assignee.get("id")) == (to.type, to.id):
            raise Refused(f"the incident is already assigned to {to.name or to.id}", status)
        return status
    applies, after = _ALLOWED[action]
    if status == after:
        raise Refused(f"the incident is already {after}", status)
    if status not in applies:
        raise Refused(f"an incident that is {status} cannot be {_PAST[action]}", status)
    return after


_PAST = {"acknowledge": "acknowledged", "resolve": "resolved", "reopen": "reopened"}


class IncidentActionStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def act(
        self,
        org: str,
        incident_id: str,
        action: ActionName,
        actor: Actor,
        *,
        to: Assignee | None = None,
        idempotency_key: str | None = None,
    ) -> Accepted:
        """Check and record ``action``; :class:`NotFound` for an unknown (or another
        organization's) incident, :class:`Refused` where its state does not allow it."""
        ident = uuid.UUID(db.uuid_or_404(incident_id, "incident"))
        async with db.transaction(self.pool) as conn:
            await conn.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_SPACE, str(ident))
            )
            incident = await _incident(conn, org, ident)
            if idempotency_key is not None:
                earlier = await _by_key(conn, org, ident, actor, idempotency_key)
                if earlier is not None:
                    if earlier["action"] != action:
                        raise Refused(
                            f"Idempotency-Key was used for {earlier['action']} on this incident",
                            incident["status"],
                        )
                    return _accepted(earlier, replayed=True)
            into = await _merged_into(conn, ident)
            if into is not None:
                raise Refused(f"the incident was merged into {into}", incident["status"], into)
            status, assignee = await _current(conn, incident)
            after = decide(action, status, assignee, to)
            now = datetime.now(UTC)
            row = await _record(conn, org, ident, action, after, actor, to, idempotency_key, now)
            await enqueue(conn, "incident-commands", _command(incident, row, actor, to))
            return _accepted(row, replayed=False)


async def _incident(conn: Conn, org: str, ident: uuid.UUID) -> Row:
    cur = await conn.execute(
        "SELECT * FROM incidents WHERE tenant_id = %s AND incident_id = %s", (org, ident)
    )
    row: Row | None = await cur.fetchone()
    if row is None:
        raise NotFound("incident")
    return row


async def _merged_into(conn: Conn, ident: uuid.UUID) -> str | None:
    """The incident this one was merged into (its ``incident.merged``), None if never merged."""
    cur = await conn.execute(
        "SELECT payload ->> 'into_incident_id' AS merged_into FROM incident_timeline"
        " WHERE incident_id = %s AND event_type = 'incident.merged'"
        " ORDER BY occurred_at DESC, log_partition DESC, log_offset DESC LIMIT 1",
        (ident,),
    )
    row: Row | None = await cur.fetchone()
    return str(row["merged_into"]) if row is not None and row["merged_into"] else None


async def _by_key(conn: Conn, org: str, ident: uuid.UUID, actor: Actor, key: str) -> Row | None:
    """The action ``actor`` took on the incident with ``key``: a key is its caller's own (issue
    17 L2), another caller's same key is no replay of theirs."""
    cur = await conn.execute(
        "SELECT * FROM incident_actions WHERE tenant_id = %s AND incident_id = %s"
        " AND actor_kind = %s AND actor_id = %s AND idempotency_key = %s",
        (org, ident, actor.kind, actor.id, key),
    )
    found: Row | None = await cur.fetchone()
    return found


async def _current(conn: Conn, incident: Row) -> tuple[str, dict[str, Any] | None]:
    """The status (and assignee) now: the last action accepted here if the projection does not
    show a later state yet, else the projection's."""
    status, assignee = incident["status"], incident["assignee"]
    cur = await conn.execute(
        "SELECT * FROM incident_actions WHERE incident_id = %s AND requested_at > %s"
        " ORDER BY requested_at",
        (incident["incident_id"], incident["state_changed_at"]),
    )
    for action in await cur.fetchall():
        status = action["status_after"]
        if action["action"] == "assign":
            assignee = action["assignee"]
    return status, assignee


async def _record(
    conn: Conn,
    org: str,
    ident: uuid.UUID,
    action: str,
    after: str,
    actor: Actor,
    to: Assignee | None,
    key: str | None,
    now: datetime,
) -> Row:
    cur = await conn.execute(
        "INSERT INTO incident_actions (action_id, incident_id, tenant_id, action, status_after,"
        " assignee, actor_kind, actor_id, actor_name, idempotency_key, requested_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
        (
            uuid.uuid4(),
            ident,
            org,
            action,
            after,
            None if to is None else Jsonb(to.model_dump(mode="json")),
            actor.kind,
            actor.id,
            actor.name,
            key,
            now,
        ),
    )
    row: Row | None = await cur.fetchone()
    assert row is not None
    return row


def _command(incident: Row, row: Row, actor: Actor, to: Assignee | None) -> Any:
    sentry = {k: v for k, v in (incident["sentry"] or {}).items() if k in SentryRef.model_fields}
    payload = IncidentActionRequestedV1(
        action_id=str(row["action_id"]),
        incident_id=str(incident["incident_id"]),
        tenant_id=incident["tenant_id"],
        action=row["action"],
        actor=actor,
        requested_at=row["requested_at"],
        status_after=row["status_after"],
        assignee=to,
        service_id=incident["service_id"] or "",
        source=incident["source"],
        severity=incident["severity"],
        sentry=SentryRef.model_validate(sentry),
        snapshot=IssueSnapshot(
            title=incident["title"],
            culprit=incident["culprit"],
            first_seen=incident["first_seen"],
            last_seen=incident["last_seen"],
            count=incident["event_count"],
        ),
    )
    return new_event(
        payload,
        key=payload.incident_id,
        tenant=payload.tenant_id,
        occurred_at=payload.requested_at,
        event_id=uuid.UUID(payload.action_id),
    )


def _accepted(row: Row, *, replayed: bool) -> Accepted:
    return Accepted(
        action_id=str(row["action_id"]),
        incident_id=str(row["incident_id"]),
        action=row["action"],
        status=row["status_after"],
        assignee=row["assignee"],
        actor={"kind": row["actor_kind"], "id": row["actor_id"], "name": row["actor_name"]},
        requested_at=row["requested_at"],
        replayed=replayed,
    )
