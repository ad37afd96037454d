"""Pure: incident and enrichment events -> the :class:`IncidentFacts` scoring needs. No IO.

The suspects state keeps thousands of recent incidents, so it keeps only these facts of each:
:class:`EventFacts` of the latest lifecycle event and :class:`EnrichmentFacts` of the latest
enrichment (a few hundred bytes, where the models were tens of kilobytes), and builds the
:class:`IncidentFacts` from them with :func:`incident_facts` when it scores.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from blametrail_common.events.enrichment import IncidentEnrichedV1
from blametrail_common.events.incidents import IncidentEvent

from blametrail_suspects.model import IncidentFacts

__all__ = [
    "EnrichmentFacts",
    "EventFacts",
    "enrichment_facts",
    "event_facts",
    "facts_from_events",
    "incident_facts",
]


@dataclass(frozen=True, slots=True)
class EventFacts:
    """What scoring reads of an incident event. ``first_seen`` falls back to ``status_at``."""

    tenant_id: str
    service_id: str
    connection_id: str
    project_slug: str | None
    status_at: datetime
    first_seen: datetime
    release: str | None
    environment: str | None
    substatus: str | None


@dataclass(frozen=True, slots=True)
class EnrichmentFacts:
    """What scoring reads of an enrichment: ``in_app_files`` crashing frame first."""

    fetched_at: datetime
    release: str | None
    environment: str | None
    in_app_files: tuple[str, ...]


def _shared(value: str | None) -> str | None:
    """Tenants, services, environments, releases and frame files repeat across incidents: one
    copy of each, not one per incident held."""
    return None if value is None else sys.intern(value)


def event_facts(incident: IncidentEvent) -> EventFacts:
    snap = incident.snapshot
    return EventFacts(
        tenant_id=sys.intern(incident.tenant_id),
        service_id=sys.intern(incident.service_id),
        connection_id=sys.intern(incident.sentry.connection_id),
        project_slug=_shared(incident.sentry.project_slug),
        status_at=incident.status_at,
        first_seen=snap.first_seen or incident.status_at,
        release=_shared(snap.release),
        environment=_shared(snap.environment),
        substatus=_shared(snap.substatus),
    )


def enrichment_facts(enrichment: IncidentEnrichedV1) -> EnrichmentFacts:
    """In-app frames come crashing frame first: last exception first, each one's frames
    reversed."""
    return EnrichmentFacts(
        fetched_at=enrichment.fetched_at,
        release=_shared(enrichment.release.version if enrichment.release else None),
        environment=_shared(enrichment.environment),
        in_app_files=tuple(
            sys.intern(name)
            for exc in reversed(enrichment.exceptions)
            for frame in reversed(exc.frames)
            if frame.in_app and (name := frame.filename or frame.abs_path)
        ),
    )


def incident_facts(
    event: EventFacts,
    enrichment: EnrichmentFacts | None = None,
    *,
    mapped_from: Iterable[str] = (),
    suspect_commits: Sequence[str] | None = None,
    suspect_authors: Sequence[str] | None = None,
) -> IncidentFacts:
    """Facts from the latest incident event's and, when it has arrived, its enrichment's.

    The enrichment's release and environment (from the event itself) win over the webhook
    snapshot's.
    """
    return IncidentFacts(
        services=(event.service_id, *(s for s in mapped_from if s != event.service_id)),
        first_seen=event.first_seen,
        release=(enrichment.release if enrichment else None) or event.release,
        environment=(enrichment.environment if enrichment else None) or event.environment,
        substatus=event.substatus,
        in_app_files=enrichment.in_app_files if enrichment else (),
        suspect_commits=tuple(suspect_commits) if suspect_commits is not None else None,
        suspect_authors=tuple(suspect_authors) if suspect_authors is not None else None,
    )


def facts_from_events(
    incident: IncidentEvent,
    enrichment: IncidentEnrichedV1 | None = None,
    *,
    mapped_from: Iterable[str] = (),
    suspect_commits: Sequence[str] | None = None,
    suspect_authors: Sequence[str] | None = None,
) -> IncidentFacts:
    """Facts from the latest incident event and, when it has arrived, its enrichment.

    The enrichment's release and environment (from the event itself) win over the webhook
    snapshot's; first-seen falls back to ``status_at`` for sources without one (metric alerts).
    In-app frames come crashing frame first: last exception first, each one's frames reversed.
    """
    return incident_facts(
        event_facts(incident),
        None if enrichment is None else enrichment_facts(enrichment),
        mapped_from=mapped_from,
        suspect_commits=suspect_commits,
        suspect_authors=suspect_authors,
    )
