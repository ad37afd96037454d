"""Enrichment records: Sentry context fetched for an incident, or why it could not be.

Produced by the enricher on ``incident-enrichments`` keyed by incident id; the projection stores
the latest per incident. Records are size-bounded: whatever was cut is listed in ``truncated``.
"""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict

from blametrail_common.events.envelope import EventPayload, event_type

__all__ = [
    "Breadcrumb",
    "ExceptionInfo",
    "IncidentEnrichedV1",
    "IncidentEnrichmentFailedV1",
    "IncidentLinkedV1",
    "ReleaseInfo",
    "StackFrame",
    "TagSummary",
    "TagValue",
    "UserContext",
]


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TagValue(_Part):
    value: str
    count: int
    first_seen: str | None = None
    last_seen: str | None = None


class TagSummary(_Part):
    key: str
    name: str
    total_values: int
    top_values: list[TagValue]


class StackFrame(_Part):
    filename: str | None
    abs_path: str | None
    module: str | None
    function: str | None
    line_no: int | None
    col_no: int | None
    in_app: bool
    context: list[tuple[int, str]]
    """Source lines around ``line_no`` as ``(line number, text)``."""


class ExceptionInfo(_Part):
    type: str | None
    value: str | None
    module: str | None
    mechanism: str | None
    handled: bool | None
    frames: list[StackFrame]
    """Oldest call first, the crashing frame last (Sentry's order)."""
    frames_omitted: int = 0


class Breadcrumb(_Part):
    timestamp: str | None
    type: str | None
    category: str | None
    level: str | None
    message: str | None
    data: dict[str, Any] | None


class UserContext(_Part):
    id: str | None
    email: str | None
    username: str | None
    ip_address: str | None
    name: str | None
    geo: dict[str, Any] | None


class ReleaseInfo(_Part):
    version: str
    date_released: str | None = None
    commit: str | None = None
    last_deploy_environment: str | None = None
    last_deploy_started: str | None = None
    last_deploy_finished: str | None = None


@event_type("incident.enriched", 1)
class IncidentEnrichedV1(EventPayload):
    """Context of an incident's latest Sentry event."""

    incident_id: str
    tenant_id: str
    connection_id: str
    sentry_issue_id: str
    sentry_event_id: str | None
    fetched_at: AwareDatetime
    title: str | None
    message: str | None
    platform: str | None
    environment: str | None
    release: ReleaseInfo | None
    tags: list[TagSummary]
    """The issue's tag distribution (``/issues/{id}/tags/``)."""
    event_tags: list[tuple[str, str]]
    """The latest event's own tags."""
    exceptions: list[ExceptionInfo]
    breadcrumbs: list[Breadcrumb]
    """The most recent ones, oldest first."""
    user: UserContext | None
    contexts: dict[str, dict[str, Any]]
    """browser, os, runtime, device, trace... as Sentry reports them."""
    event_created_at: str | None
    event_received_at: str | None
    links: dict[str, str]
    truncated: list[str]
    """Markers of what was cut to respect the size bound, e.g. ``"breadcrumbs:120->30"``."""


@event_type("incident.enrichment_failed", 1)
class IncidentEnrichmentFailedV1(EventPayload):
    """Enrichment gave up (the incident event went to the dead-letter topic for redrive)."""

    incident_id: str
    tenant_id: str
    sentry_issue_id: str
    reason: str
    attempts: int
    failed_at: AwareDatetime


@event_type("incident.linked", 1)
class IncidentLinkedV1(EventPayload):
    """The incident is shown on its Sentry issue (a Sentry external issue, PROTOCOL §4/§5)."""

    incident_id: str
    tenant_id: str
    connection_id: str
    sentry_issue_id: str
    external_issue_id: str
    sentry_web_url: str | None  # the Sentry issue's page
    incident_url: str  # what the Sentry issue links to
    linked_at: AwareDatetime
