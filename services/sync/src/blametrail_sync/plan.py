"""Pure: which state wins an incident, and what (if anything) to write back to the Sentry issue.

The rule when BlameTrail and Sentry change one incident at about the same time (README,
"BlameTrail and Sentry changing one incident"):

1. **The later change wins, on both sides.** Every change is an incident event ordered by
   ``incident_order``: first by its time (a BlameTrail action: when the API accepted it; a Sentry
   change: ``Sentry-Hook-Timestamp``), ties broken by the issue's ``lastSeen``/count, then by
   kind (a resolve last), then by a digest. The projection shows the winner; so does this
   worker's :class:`Winner`.
2. **Sentry is made to show the winner.** A winning BlameTrail action (resolve, reopen,
   acknowledge) is written back once (:func:`plan`, cause ``action``). A winning Sentry change
   needs nothing, unless our own write-back reached Sentry *after* it (our ``PUT`` at or after
   the Sentry change's time, less ``margin``) and set another state: then the winner is written
   back (cause ``repair``). An echo of our own write-back is a confirmation, never a change, so a
   repair cannot start another: there is no loop and no flapping.
3. **A Sentry change that loses by order may still have landed after our write-back** (Sentry
   stamps whole seconds; the hook timestamp is when it was sent): a losing Sentry change to
   another state, stamped no earlier than the written winner's write-back less one second and
   ``margin``, *contests* it (``written_order`` = :data:`CONTESTED`), and the winner is written
   again (cause ``repair``). A PUT of a state Sentry already shows is harmless; a missed one
   leaves the two sides different for good. The change that contested (``contested_by``) landed
   before the repair, which was made after it was read: read again (delivery is at least once),
   it contests nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from blametrail_common.events.actions import sentry_status_for
from blametrail_common.events.incidents import (
    IncidentActionV1,
    IncidentEvent,
    IncidentMutedV1,
    IncidentOpenedV1,
    IncidentReopenedV1,
    IncidentResolvedV1,
    incident_order,
)

__all__ = ["CONTESTED", "MARGIN", "Plan", "Winner", "observe", "plan", "status_of", "written"]

MARGIN = timedelta(seconds=2)
"""Sentry stamps whole seconds; a write-back this close to a Sentry change is treated as after it."""
FLOOR = timedelta(seconds=1)
"""How much later than its stamp a Sentry change may have happened (whole seconds, floored)."""
CONTESTED = "!contested"
"""``written_order`` of a winner whose write-back a later-landing Sentry change may have undone."""


@dataclass(frozen=True)
class Winner:
    """The winning state of one incident as this worker knows it, and the last write-back."""

    order: str
    status: str
    origin: Literal["blametrail", "sentry"]
    at: datetime
    action_id: str | None = None
    written_order: str | None = None
    written_status: str | None = None
    written_at: datetime | None = None
    contested_by: str | None = None
    """``incident_order`` of the Sentry change that last contested this winner's write-back."""


@dataclass(frozen=True)
class Plan:
    status: str
    """The BlameTrail status to write back (``resolved``, ``open``, ``acknowledged``)."""
    cause: Literal["action", "repair"]


_MIRRORED = ("resolve", "reopen", "acknowledge")


def status_of(event: IncidentEvent) -> str | None:
    """The status an event sets, or ``None`` for events that do not decide the status here:
    assignments keep it, and an alert that fired again (``incident.updated``) carries no status
    at all (its "open" would undo an acknowledge or a resolve and PUT ``unresolved`` back).
    The projection follows the same rule (``blametrail_projector.rows.sets_status``)."""
    if isinstance(event, IncidentActionV1):
        return event.status if event.action in _MIRRORED else None
    if isinstance(event, IncidentResolvedV1):
        return "resolved"
    if isinstance(event, IncidentMutedV1):
        return "muted"
    if isinstance(event, IncidentOpenedV1 | IncidentReopenedV1):
        return "open"
    return None


def _contests(
    current: Winner, event: IncidentEvent, order: str, status: str, margin: timedelta
) -> bool:
    """Whether a losing ``event`` (of ``order``) may have landed in Sentry after the winner's
    write-back and set another state there (rule 3)."""
    return (
        not isinstance(event, IncidentActionV1)
        and order != current.contested_by
        and current.written_order == current.order
        and current.written_at is not None
        and status != current.status
        and event.status_at + FLOOR + margin >= current.written_at
    )


def observe(
    current: Winner | None, event: IncidentEvent, margin: timedelta = MARGIN
) -> Winner | None:
    """The winner after ``event`` (``current`` unchanged when it comes earlier in
    ``incident_order``, or sets no status; contested when it comes earlier by order but may have
    landed after the winner's write-back: rule 3)."""
    status = status_of(event)
    if status is None:
        return current
    order = incident_order(event)
    if current is not None and order <= current.order:
        if _contests(current, event, order, status, margin):
            return replace(current, written_order=CONTESTED, contested_by=order)
        return current
    action = isinstance(event, IncidentActionV1)
    new = Winner(
        order=order,
        status=status,
        origin="blametrail" if action else "sentry",
        at=event.status_at,
        action_id=event.action_id if isinstance(event, IncidentActionV1) else None,
    )
    if current is None:
        return new
    return replace(
        new,
        written_order=None if current.written_order == CONTESTED else current.written_order,
        written_status=current.written_status,
        written_at=current.written_at,
    )


def plan(winner: Winner | None, *, enabled: bool, margin: timedelta = MARGIN) -> Plan | None:
    """What to write back now, if anything (see the module's rule)."""
    if winner is None or not enabled or sentry_status_for(winner.status) is None:
        return None
    if winner.written_order == CONTESTED:
        return Plan(winner.status, "repair")
    if winner.origin == "blametrail":
        if winner.written_order == winner.order:
            return None
        return Plan(winner.status, "action")
    if (
        winner.written_at is not None
        and winner.written_status != winner.status
        and winner.written_at >= winner.at - margin
    ):
        return Plan(winner.status, "repair")
    return None


def written(winner: Winner, status: str, at: datetime) -> Winner:
    """The winner once ``status`` was written back at ``at``."""
    return replace(winner, written_order=winner.order, written_status=status, written_at=at)
