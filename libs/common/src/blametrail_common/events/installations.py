"""The public (OAuth) app's installation life cycle, as the control plane consumes it.

``sentry.installation`` on ``sentry-installations`` (key: installation uuid): the normalizer's
reading of an ``installation`` webhook. ``created`` carries the grant code (single use, valid ten
minutes); the control plane exchanges it unless the browser redirect already did.

``sentry.installation_seen`` on ``sentry-installations`` (key: installation uuid): a webhook that
came to an internal connection's own URL, signed with its secret, names an installation the
connection does not know (yet): the control plane records it as the connection's, so Sentry
UI-component calls naming another installation are refused.

``sentry.token_refresh_requested`` on ``oauth-refresh-requests`` (key: connection id): a reader
of the connection's token (the enricher) saw Sentry reject it and asks the token's single owner
(the control plane) for an early refresh rather than refreshing itself — refresh tokens are
single use, so two refreshers would lock each other out.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import AwareDatetime

from blametrail_common.events.envelope import EventPayload, event_type

__all__ = [
    "SentryInstallationSeenV1",
    "SentryInstallationV1",
    "TokenRefreshRequestedV1",
    "token_fingerprint",
]


def token_fingerprint(token: str) -> str:
    """Names a token without revealing it: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


@event_type("sentry.installation", 1)
class SentryInstallationV1(EventPayload):
    installation_uuid: str
    action: Literal["created", "deleted"]
    sentry_org_slug: str | None
    app_slug: str | None = None
    code: str | None = None
    """The grant of ``created``: a ten-minute, single-use secret (it also sits in the raw topic)."""
    connection_id: str | None = None
    """Set when the webhook came to an internal integration's own URL."""
    raw_event_id: str
    received_at: AwareDatetime


@event_type("sentry.installation_seen", 1)
class SentryInstallationSeenV1(EventPayload):
    installation_uuid: str
    connection_id: str
    """The internal connection whose URL (and secret) the webhook came through."""
    raw_event_id: str
    received_at: AwareDatetime


@event_type("sentry.token_refresh_requested", 1)
class TokenRefreshRequestedV1(EventPayload):
    connection_id: str
    rejected_token: str
    """:func:`token_fingerprint` of the token Sentry rejected: a request about a token that has
    been replaced since is moot."""
    reason: str
    requested_at: AwareDatetime
