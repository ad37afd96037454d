"""Control-plane state events on compacted topics: the latest value per key is the truth.

The mappings API publishes each row's full state (through its transactional outbox) on every
change, and a tombstone (``None`` value) on delete. Readers (ingest, normalizer, enricher) keep
key -> latest state in memory; duplicates and replays are harmless by construction.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime

from blametrail_common.events.envelope import EventPayload, event_type

__all__ = ["ConnectionStateV1", "MappingStateV1", "ServiceStateV1", "mapping_key"]


def mapping_key(connection_id: str, sentry_project_slug: str) -> str:
    """Key of a mapping on ``cp-mappings``: one Sentry project of one connection."""
    return f"{connection_id}:{sentry_project_slug}"


@event_type("controlplane.service", 1)
class ServiceStateV1(EventPayload):
    """A BlameTrail service (key: service id)."""

    service_id: str
    tenant_id: str
    slug: str
    name: str
    description: str = ""
    updated_at: AwareDatetime


@event_type("controlplane.connection", 1)
class ConnectionStateV1(EventPayload):
    """A Sentry connection (key: connection id). Secrets only ever appear encrypted
    (:class:`blametrail_common.crypto.SecretBox` with ``BLAMETRAIL_SECRET_KEYS``)."""

    connection_id: str
    tenant_id: str
    mode: Literal["internal", "oauth"]
    enabled: bool
    sentry_org_slug: str
    api_base_url: str
    installation_uuid: str | None = None
    client_secrets_enc: list[str]
    """Every client secret currently valid for signatures (rotation: old and new), encrypted."""
    auth_token_enc: str | None = None
    token_expires_at: AwareDatetime | None = None
    updated_at: AwareDatetime
    writeback: bool = True
    """Mirror BlameTrail's resolve / reopen / acknowledge onto the Sentry issue (services/sync)."""
    sentry_app_uuid: str | None = None
    """The uuid of the Sentry integration (app) the connection's token belongs to, where known:
    Sentry's webhook for a change made with that token names it as ``actor.id`` (echoes)."""


@event_type("controlplane.mapping", 1)
class MappingStateV1(EventPayload):
    """A Sentry project -> BlameTrail service mapping (key: :func:`mapping_key`)."""

    mapping_id: str
    tenant_id: str
    connection_id: str
    sentry_project_slug: str
    sentry_project_id: str | None = None
    service_id: str
    active: bool
    updated_at: AwareDatetime
