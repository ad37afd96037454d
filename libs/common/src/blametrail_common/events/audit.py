"""Audit records on ``webhook-audit``: webhooks received but not turned into incidents, and why;
and webhooks that did make an incident but carried an alert-action setting that was ignored."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime

from blametrail_common.events.envelope import EventPayload, event_type

__all__ = ["AuditReason", "WebhookAuditedV1"]

AuditReason = Literal[
    "unmapped",  # no mapping for the project
    "inactive",  # the mapping is disabled
    "unsupported",  # a resource/action we do not turn into incidents
    "unknown_connection",  # neither the connection nor the installation is known
    "uninstalled",  # the connection is disabled / the app was uninstalled
    "environment_filtered",  # an alert-rule action's environment filter excluded it
    "invalid_payload",  # valid JSON, but not the shape Sentry documents
    "unknown_service",  # an alert-rule action named a service that is not the tenant's
    "invalid_setting",  # an alert-rule action setting was ignored (the incident was still made)
    "stale",  # a state webhook whose body shows another state (a retry re-serialised later)
]


@event_type("webhook.audited", 1)
class WebhookAuditedV1(EventPayload):
    reason: AuditReason
    detail: str
    tenant_id: str | None
    connection_id: str | None
    installation_uuid: str | None
    resource: str
    action: str | None
    project_slug: str | None = None
    project_id: str | None = None
    raw_event_id: str
    body_sha256: str
    received_at: AwareDatetime
