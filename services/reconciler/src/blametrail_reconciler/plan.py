"""Pure: what a sweep asks Sentry, and what it publishes for what Sentry answered.

No I/O here (``sweep.py`` does it). A sweep compares each incident the read model shows with
the Sentry issue behind it; only a disagreement becomes an observation, so an unchanged issue
publishes nothing and a second sweep after a repair finds nothing to say.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlencode

from blametrail_common.events.observations import KnownIncident

__all__ = [
    "BATCH",
    "Decision",
    "Tracked",
    "batches",
    "compare",
    "creations_path",
    "creations_since",
    "decide_created",
    "id_search_path",
    "next_cursor",
    "observation_id",
    "our_status",
    "repair_kind",
]

BATCH = 100  # Sentry's page size limit: one search call per 100 incidents
Kind = Literal["status", "created", "merged"]
_OURS = {"unresolved": "open", "resolved": "resolved", "ignored": "muted"}
_REPAIR = {"open": "reopened", "resolved": "resolved", "muted": "muted"}


@dataclass(frozen=True, slots=True)
class Tracked:
    """One incident of Sentry origin as the read model shows it."""

    issue_id: str
    incident: KnownIncident
    state_changed_at: datetime
    sentry_status: str | None = None
    """The status Sentry last reported for the issue, in Sentry's words (``unresolved``,
    ``resolved``, ``ignored``): its latest webhook or observation, or a write-back it confirmed
    or echoed. None when the timeline holds none (the read model's status is compared then)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Publish an observation of ``kind`` about ``asked_issue_id`` with Sentry's ``issue``."""

    kind: Kind
    asked_issue_id: str
    issue: dict[str, Any]
    incident: KnownIncident | None
    repair: str  # resolved | reopened | muted | created | merged
    observed_at: datetime | None = None
    """When Sentry answered (the batch's or page's fetch), not when the sweep began."""
    state_changed_at: datetime | None = None
    """The read model's state the decision was made against (status repairs)."""


_IDS = uuid.UUID("5b0c9f1e-7a43-4d7e-9c55-2f3a8e61b0d4")


def observation_id(connection_id: str, d: Decision) -> uuid.UUID:
    """The observation's event id, the same in every sweep that finds the same disagreement
    (a crash between publish and record, or a projection behind by more than the interval,
    republishes it under the same ids, which the fold and the timeline already hold): the
    connection, issue, kind and Sentry's answer (status, its lastSeen, the primary of a merge)
    and, for a status repair, the read model's state it disagreed with."""
    issue = d.issue
    parts = [
        connection_id,
        d.asked_issue_id,
        d.kind,
        str(issue.get("id") or ""),
        str(issue.get("status") or ""),
    ]
    if d.kind == "status":
        parts += [
            str(issue.get("lastSeen") or ""),
            d.incident.status if d.incident is not None else "",
            d.state_changed_at.isoformat() if d.state_changed_at is not None else "",
        ]
    return uuid.uuid5(_IDS, "\x1f".join(parts))


def our_status(status: str) -> str:
    """An incident status as it compares with Sentry's (an acknowledged incident is open there)."""
    return "open" if status == "acknowledged" else status


def repair_kind(sentry_status: str) -> str | None:
    ours = _OURS.get(sentry_status)
    return _REPAIR.get(ours) if ours else None


def batches(items: Sequence[Tracked], size: int = BATCH) -> Iterator[list[Tracked]]:
    for at in range(0, len(items), size):
        yield list(items[at : at + size])


def _path(org: str, query: str, cursor: str | None = None) -> str:
    params = {"query": query, "limit": str(BATCH)}
    if cursor:
        params["cursor"] = cursor
    return f"/api/0/organizations/{org}/issues/?{urlencode(params)}"


def id_search_path(org: str, issue_ids: Iterable[str]) -> str:
    """One search for up to 100 issues by id, whatever their status (no ``is:`` term)."""
    return _path(org, f"issue.id:[{','.join(issue_ids)}]")


def creations_path(org: str, since: datetime, cursor: str | None = None) -> str:
    """Issues first seen after ``since`` (the last sweep, less an overlap), newest first."""
    at = since.replace(tzinfo=None, microsecond=0).isoformat()
    return _path(org, f"firstSeen:>{at}", cursor)


_NEXT = re.compile(r'rel="next";\s*results="(?P<results>true|false)";\s*cursor="(?P<cursor>[^"]*)"')


def next_cursor(link: str | None) -> str | None:
    """The cursor of the next page from Sentry's ``Link`` header, None on the last page."""
    found = _NEXT.search(link or "")
    return found["cursor"] if found and found["results"] == "true" else None


def compare(
    batch: Sequence[Tracked],
    found: dict[str, dict[str, Any]],
    *,
    now: datetime,
    settle: timedelta,
) -> tuple[list[Decision], list[Tracked]]:
    """Decisions for one batch, and the incidents the search did not find (merged or gone:
    worth one detail call each). An incident whose state changed within ``settle`` is left
    alone this time (a webhook or a write-back in flight would otherwise be raced)."""
    decisions: list[Decision] = []
    missing: list[Tracked] = []
    for item in batch:
        issue = found.get(item.issue_id)
        if issue is None:
            missing.append(item)
            continue
        decision = decide_status(item, issue, now=now, settle=settle)
        if decision is not None:
            decisions.append(decision)
    return decisions, missing


def decide_status(
    item: Tracked, issue: dict[str, Any], *, now: datetime, settle: timedelta
) -> Decision | None:
    """The decision for one incident and the issue Sentry answered for it (maybe another one:
    a merge), or None when they agree."""
    answered = str(issue.get("id") or "")
    if answered and answered != item.issue_id:
        return Decision("merged", item.issue_id, issue, item.incident, "merged", now)
    if now - item.state_changed_at < settle:
        return None
    status = str(issue.get("status") or "")
    theirs = _OURS.get(status)
    if theirs is None or theirs == our_status(item.incident.status):
        return None
    if item.sentry_status is not None and _OURS.get(item.sentry_status) == theirs:
        # Sentry has not changed since it last told us: the difference is a BlameTrail action
        # that was never mirrored (write-back off, refused or failed), and it stands.
        return None
    return Decision(
        "status", item.issue_id, issue, item.incident, _REPAIR[theirs], now, item.state_changed_at
    )


def creations_since(
    last_success: datetime | None,
    now: datetime,
    *,
    overlap: timedelta,
    settle: timedelta,
    first_lookback: timedelta,
) -> datetime:
    """The ``firstSeen`` bound of the creations search: the last successful sweep's start less
    the overlap, never less than the settle time (an issue a sweep left to settle is found by
    the next one), or ``first_lookback`` before now for a connection never swept."""
    if last_success is None:
        return now - first_lookback
    return last_success - max(overlap, settle)


def _first_seen(issue: dict[str, Any]) -> datetime | None:
    raw = issue.get("firstSeen")
    if not isinstance(raw, str):
        return None
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo is not None else None


def decide_created(
    issues: Iterable[dict[str, Any]],
    known_incident: set[str],
    mapped_slugs: set[str],
    ids: Any,
    *,
    now: datetime,
    settle: timedelta,
    observed_at: datetime | None = None,
) -> list[Decision]:
    """Issues of mapped, active projects with no incident yet: missed ``issue.created``.
    ``ids(issue_id) -> incident id``; ``known_incident``: incident ids the read model has.

    An issue first seen within ``settle`` of ``now`` is left alone this time: its webhook may be
    in flight, and taking it for a missed one would be a false "webhooks lost" (the next sweep's
    overlap finds it, see :func:`creations_since`). An issue without a readable ``firstSeen``
    is not left alone (the search only returns issues first seen since its bound)."""
    out: list[Decision] = []
    seen: set[str] = set()
    for issue in issues:
        issue_id = str(issue.get("id") or "")
        project = issue.get("project") if isinstance(issue.get("project"), dict) else {}
        slug = str(project.get("slug") or "") if isinstance(project, dict) else ""
        if not issue_id or issue_id in seen or slug not in mapped_slugs:
            continue
        seen.add(issue_id)
        first = _first_seen(issue)
        if first is not None and now - first < settle:
            continue
        if ids(issue_id) not in known_incident:
            out.append(Decision("created", issue_id, issue, None, "created", observed_at))
    return out
