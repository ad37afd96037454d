"""What the reconciler saw in Sentry, and the merges it learnt (issue 18 §3-4).

* :class:`IssueObservedV1` on ``sentry-observations`` (key: connection id + ``:`` + the Sentry
  issue id asked about): the issue as the Sentry API answered it, only when it disagrees with the
  read model (an unchanged issue publishes nothing). The normalizer folds it exactly like the
  webhook Sentry would have sent for that state (``status_at`` = ``observed_at``, ordered by
  :func:`~blametrail_common.events.incidents.incident_order` like every webhook).
* :class:`IssueAliasV1` on the compacted ``sentry-issue-aliases`` (same key): a merged-away issue
  id and the issue that superseded it; the normalizer reads the table whole, like the
  control-plane tables, and files anything later about the old id under the primary.
* :class:`IncidentMergedV1` / :class:`IncidentAbsorbedV1` on ``incident-events``: the two
  timelines of a merge (the merged-away incident is closed; the primary's says what it took in).

Every string in :attr:`IssueObservedV1.issue` came from Sentry: :func:`bounded_issue` keeps the
fields the normalizer reads and cuts every string to :data:`MAX_TEXT`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from blametrail_common.events.envelope import EventPayload, event_type
from blametrail_common.events.incidents import IncidentEvent

__all__ = [
    "MAX_TEXT",
    "IncidentAbsorbedV1",
    "IncidentMergedV1",
    "IssueAliasV1",
    "IssueObservedV1",
    "KnownIncident",
    "MovedLink",
    "alias_key",
    "bounded_issue",
]

MAX_TEXT = 1000
_KEPT = (
    "id",
    "shortId",
    "title",
    "culprit",
    "permalink",
    "level",
    "status",
    "substatus",
    "statusDetails",
    "platform",
    "project",
    "firstSeen",
    "lastSeen",
    "count",
    "userCount",
    "assignedTo",
)


def alias_key(connection_id: str, issue_id: str) -> str:
    """Key of observations and aliases: one Sentry issue id of one connection."""
    return f"{connection_id}:{issue_id}"


def _bound(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return value[:MAX_TEXT]
    if isinstance(value, bool | int | float) or value is None:
        return value
    if depth >= 2:
        return None
    if isinstance(value, dict):
        return {str(k)[:100]: _bound(v, depth + 1) for k, v in list(value.items())[:20]}
    if isinstance(value, list):
        return [_bound(v, depth + 1) for v in value[:20]]
    return None


def bounded_issue(issue: dict[str, Any]) -> dict[str, Any]:
    """Pure: the fields of Sentry's issue serializer the normalizer reads, strings bounded."""
    return {k: _bound(issue[k]) for k in _KEPT if k in issue}


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KnownIncident(_Part):
    """What the read model showed for the incident of the issue asked about."""

    incident_id: str
    service_id: str
    severity: Literal["sev1", "sev2", "sev3", "sev4", "sev5"]
    title: str
    status: str
    project_slug: str | None = None
    project_id: str | None = None
    short_id: str | None = None


class MovedLink(_Part):
    """A BlameTrail link shown on the merged-away issue (``sentry_issue_links``), moved."""

    external_issue_id: str | None = None
    web_url: str | None = None


@event_type("sentry.issue.observed", 1)
class IssueObservedV1(EventPayload):
    """The Sentry issue ``asked_issue_id`` as the API answered at ``observed_at``.

    ``kind``: ``status`` (its status differs from the incident's: a missed resolve, unresolve or
    ignore), ``created`` (first seen in a mapped project, no incident yet: a missed
    ``issue.created``), ``merged`` (the API answered with another issue, ``issue["id"]``: the
    asked one was merged into it)."""

    connection_id: str
    tenant_id: str
    kind: Literal["status", "created", "merged"]
    asked_issue_id: str
    issue: dict[str, Any]
    observed_at: AwareDatetime
    sweep_id: str
    incident: KnownIncident | None = None
    """The asked issue's incident (``status``, ``merged``); None for ``created``."""
    primary_known: bool = False
    """``merged``: the primary issue already has an incident (else the fold opens one)."""
    moved_links: list[MovedLink] = []


@event_type("sentry.issue.alias", 1)
class IssueAliasV1(EventPayload):
    """``issue_id`` was merged into ``primary_issue_id`` (key: :func:`alias_key`)."""

    connection_id: str
    tenant_id: str
    issue_id: str
    primary_issue_id: str
    merged_at: AwareDatetime


@event_type("incident.merged", 1)
class IncidentMergedV1(IncidentEvent):
    """Sentry merged this incident's issue into another: this incident is closed, its history
    continues on ``into_incident_id`` (the primary issue's incident)."""

    into_incident_id: str
    into_issue_id: str


@event_type("incident.absorbed", 1)
class IncidentAbsorbedV1(IncidentEvent):
    """This incident's issue took in a merged-away issue (``merged_issue_id``, whose incident
    ``merged_incident_id`` is closed); its links (``moved_links``) now belong here."""

    merged_incident_id: str
    merged_issue_id: str
    moved_links: list[MovedLink] = []
