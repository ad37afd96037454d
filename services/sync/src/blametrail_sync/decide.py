"""Pure: one poll batch of incident events -> each incident's winner and what to write back.

Events of one incident are folded in log order with :func:`blametrail_sync.plan.observe`; the
write-back is planned once per incident and batch, on the final winner, and only when the
winning event itself is in the batch (a new winner, or the winner redelivered: a crash before
the commit, or ``blametrail dlq redrive`` of a failed write-back). An event that does not win
never re-plans an old winner, so a refused write-back is not tried again by later events -
except a Sentry change that contests the winner's write-back (``plan`` rule 3): then the winner
is planned again, once, with that change's record (``winner_index``) as the one dead-lettered if
Sentry does not answer; that record read again (its redrive) plans the repair again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from blametrail_common.events.incidents import IncidentEvent, incident_order

from blametrail_sync.plan import CONTESTED, Plan, Winner, observe, plan

__all__ = ["Decision", "Tracked", "decide", "issue_of"]


@dataclass(frozen=True)
class Tracked:
    """A winner and the Sentry issue it belongs to (a row of ``sync_incidents``)."""

    incident_id: str
    tenant_id: str
    connection_id: str
    issue_id: str
    winner: Winner


@dataclass(frozen=True)
class Decision:
    tracked: Tracked
    plan: Plan | None
    winner_index: int | None
    """Index (in the batch) of the winning event, when it is in the batch; else of the Sentry
    change that contested the winner's write-back in this batch."""


def issue_of(event: IncidentEvent) -> tuple[str, str] | None:
    """``(connection id, Sentry issue id)`` of an event the worker may write back, else ``None``
    (metric-alert incidents have no issue to update)."""
    if event.source != "sentry_issue" or not event.sentry.issue_id:
        return None
    return event.sentry.connection_id, event.sentry.issue_id


def decide(
    events: Sequence[tuple[int, IncidentEvent]],
    known: Mapping[str, Tracked],
    enabled: Callable[[str], bool],
) -> list[Decision]:
    """Decisions for the incidents in ``events`` (``(batch index, event)`` in log order) whose
    winner changed or was redelivered; ``enabled(connection_id)`` is the connection's setting."""
    state: dict[str, Tracked] = {}
    seen: dict[str, dict[str, int]] = {}
    contested: dict[str, int] = {}
    for index, event in events:
        ref = issue_of(event)
        if ref is None:
            continue
        current = state.get(event.incident_id) or known.get(event.incident_id)
        winner = observe(current.winner if current else None, event)
        if winner is None:
            continue
        if winner.written_order == CONTESTED and (
            current is None or current.winner.written_order != CONTESTED
        ):
            contested[event.incident_id] = index
        state[event.incident_id] = Tracked(
            event.incident_id, event.tenant_id, ref[0], ref[1], winner
        )
        seen.setdefault(event.incident_id, {})[incident_order(event)] = index
    out = []
    for incident_id, tracked in state.items():
        winning = seen[incident_id].get(tracked.winner.order)
        if tracked.winner.written_order == CONTESTED:
            # contested in this batch; else a repair that failed, its contesting change read
            # again (``blametrail dlq redrive`` of its dead letter): the repair is tried again
            again = seen[incident_id].get(tracked.winner.contested_by or "")
            winning = contested.get(incident_id, again if again is not None else winning)
        before = known.get(incident_id)
        if winning is None and before is not None and before.winner == tracked.winner:
            continue  # nothing new about it
        todo = None
        if winning is not None:
            todo = plan(tracked.winner, enabled=enabled(tracked.connection_id))
        out.append(Decision(tracked, todo, winning))
    return out
