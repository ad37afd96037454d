"""Enricher settings (environment, prefix ``BLAMETRAIL_ENRICHER_``)."""

from __future__ import annotations

from blametrail_common.settings import PREFIX, BaseBlametrailSettings
from pydantic import Field

__all__ = ["EnricherSettings"]


class EnricherSettings(BaseBlametrailSettings):
    host: str = Field(default="127.0.0.1", validation_alias=f"{PREFIX}ENRICHER_HOST")
    port: int = Field(default=8084, validation_alias=f"{PREFIX}ENRICHER_PORT")
    group_id: str = Field(default="blametrail-enricher", validation_alias=f"{PREFIX}ENRICHER_GROUP")
    breadcrumbs: int = Field(default=30, validation_alias=f"{PREFIX}ENRICHER_BREADCRUMBS")
    max_record_bytes: int = Field(
        default=256 * 1024, validation_alias=f"{PREFIX}ENRICHER_MAX_RECORD_BYTES"
    )
    max_attempts: int = Field(default=5, validation_alias=f"{PREFIX}ENRICHER_MAX_ATTEMPTS")
    incident_url: str = Field(
        default="http://127.0.0.1:8080/incidents/{incident_id}",
        validation_alias=f"{PREFIX}ENRICHER_INCIDENT_URL",
    )
    """What the link put on a Sentry issue opens, ``{incident_id}`` replaced: the web's incident
    page on the public host (the default: ``make up``'s edge)."""
    concurrency_per_org: int = Field(
        default=4, ge=1, validation_alias=f"{PREFIX}ENRICHER_CONCURRENCY_PER_ORG"
    )
    """Sentry calls in flight per organization and endpoint until Sentry names its concurrent
    limit (then it grows to that limit: blametrail_common.sentry_api.Budget)."""
    http_connections: int = Field(
        default=75, ge=1, validation_alias=f"{PREFIX}ENRICHER_HTTP_CONNECTIONS"
    )
    """Connections to Sentry open at once (the pool's size; a call past them waits for one, and
    its timeout starts when it has one): Sentry's concurrent limit, 25 calls per organization
    and endpoint, times the three endpoints an enrichment calls (latest event, tags, external
    issue)."""
    concurrency: int = Field(default=128, ge=1, validation_alias=f"{PREFIX}ENRICHER_CONCURRENCY")
    """Incidents of one poll batch enriched at once (their calls then queue for Sentry's slots)."""
    # Parking and redrive while Sentry does not answer (blametrail_enricher.parking).
    retry_budget_s: float = Field(
        default=3600.0, validation_alias=f"{PREFIX}ENRICHER_RETRY_BUDGET_S"
    )
    retry_base_delay_s: float = Field(
        default=2.0, validation_alias=f"{PREFIX}ENRICHER_RETRY_BASE_DELAY_S"
    )
    retry_max_delay_s: float = Field(
        default=30.0, validation_alias=f"{PREFIX}ENRICHER_RETRY_MAX_DELAY_S"
    )
    batch_budget_s: float = Field(
        default=120.0, validation_alias=f"{PREFIX}ENRICHER_BATCH_BUDGET_S"
    )
    redrive_concurrency: int = Field(
        default=8, validation_alias=f"{PREFIX}ENRICHER_REDRIVE_CONCURRENCY"
    )
    link_retry_after_s: float = Field(
        default=6 * 3600.0, validation_alias=f"{PREFIX}ENRICHER_LINK_RETRY_AFTER_S"
    )
    """An installation whose links Sentry refused is tried again after this long (or at once
    when its token or installation changes)."""
    known_incidents: int = Field(
        default=100_000, validation_alias=f"{PREFIX}ENRICHER_KNOWN_INCIDENTS"
    )
