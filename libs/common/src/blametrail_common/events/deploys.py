"""Deploys and the suspects scored from them.

``deploy.recorded`` on ``deploys`` (keyed and compacted by deploy id): a deploy of a service,
recorded through the API or imported from Sentry. ``incident.suspects`` on ``incident-suspects``
(keyed and compacted by incident id): the ranked deploys that most likely caused an incident,
each with the signals behind its score; a newer computation replaces the older one.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from blametrail_common.events.envelope import EventPayload, event_type

__all__ = ["DeployRecordedV1", "IncidentSuspectsV1", "SuspectSignal", "SuspectV1", "deploy_id_for"]

_DEPLOYS = uuid.UUID("5f0d3a8e-8c8b-4f0e-9d55-2b7c1a9e4d10")


def deploy_id_for(
    tenant_id: str, service_id: str, environment: str | None, version: str | None, start: datetime
) -> str:
    """The deploy's id: one per (tenant, service, environment, version, start), whoever records it
    (the API, a Sentry import), so recording the same deploy twice updates one row."""
    natural = ":".join((tenant_id, service_id, environment or "", version or "", start.isoformat()))
    return str(uuid.uuid5(_DEPLOYS, natural))


@event_type("deploy.recorded", 1)
class DeployRecordedV1(EventPayload):
    deploy_id: str
    tenant_id: str
    service_id: str
    version: str | None
    environment: str | None
    commit_sha: str | None
    started_at: AwareDatetime | None
    finished_at: AwareDatetime | None
    author: str | None = None
    url: str | None = None
    changed_paths: list[str] | None = None  # repository-relative; None: unknown (not "none")
    source: Literal["api", "sentry"] = "api"
    recorded_at: AwareDatetime


class SuspectSignal(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    value: float
    weight: float
    contribution: float
    imputed: bool
    detail: str


class SuspectV1(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    deploy_id: str
    service_id: str
    version: str | None
    environment: str | None
    finished_at: AwareDatetime | None
    url: str | None
    score: float
    explain: str
    signals: list[SuspectSignal]


@event_type("incident.suspects", 1)
class IncidentSuspectsV1(EventPayload):
    incident_id: str
    tenant_id: str
    computed_at: AwareDatetime  # the newest input's time (not the clock): replays give the same
    candidates: int
    suspects: list[SuspectV1]  # ranked, best first
