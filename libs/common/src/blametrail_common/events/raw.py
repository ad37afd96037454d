"""Raw webhook events: what ingest accepted, byte for byte, before any interpretation."""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import AwareDatetime

from blametrail_common.events.envelope import EventPayload, event_type

__all__ = ["WebhookReceivedV1", "body_sha256"]


def body_sha256(body: bytes) -> str:
    """The content hash recorded with every webhook (lowercase hex)."""
    return hashlib.sha256(body).hexdigest()


@event_type("sentry.webhook.received", 1)
class WebhookReceivedV1(EventPayload):
    """A Sentry webhook whose signature verified.

    ``body`` is the request body decoded as UTF-8 (ingest rejects anything else), so
    ``body.encode()`` gives back the exact bytes Sentry signed.
    """

    connection_id: str | None
    """Internal-integration connection the URL named; ``None`` for the public (OAuth) app URL."""
    resource: str
    action: str | None
    installation_uuid: str | None
    signature_header: Literal["Sentry-Hook-Signature", "Sentry-App-Signature"]
    request_id: str | None
    hook_timestamp: str | None
    received_at: AwareDatetime
    body_sha256: str
    body: str
    supported: bool = True
