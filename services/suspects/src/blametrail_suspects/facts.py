"""Pure: incident and enrichment events -> the :class:`IncidentFacts` scoring needs. No IO."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from blametrail_common.events.enrichment import IncidentEnrichedV1
from blametrail_common.events.incidents import IncidentEvent

from blametrail_suspects.model import IncidentFacts

__all__ = ["facts_from_events"]


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
    snap = incident.snapshot
    release = enrichment.release.version if enrichment and enrichment.release else None
    environment = enrichment.environment if enrichment else None
    files = tuple(
        name
        for exc in reversed(enrichment.exceptions if enrichment else [])
        for frame in reversed(exc.frames)
        if frame.in_app and (name := frame.filename or frame.abs_path)
    )
    return IncidentFacts(
        services=(incident.service_id, *(s for s in mapped_from if s != incident.service_id)),
        first_seen=snap.first_seen or incident.status_at,
        release=release or snap.release,
        environment=environment or snap.environment,
        substatus=snap.substatus,
        in_app_files=files,
        suspect_commits=tuple(suspect_commits) if suspect_commits is not None else None,
        suspect_authors=tuple(suspect_authors) if suspect_authors is not None else None,
    )
