"""Sentry credentials per connection, learnt from ``cp-connections`` (tokens arrive encrypted).

Shared by the workers that call Sentry on a connection's behalf (the enricher, the write-back
worker). Needs the ``kafka``, ``crypto`` and ``sentry`` extras.

An OAuth token has one owner, the control plane's token keeper: a rejected one is reported on
``oauth-refresh-requests`` (naming the token by fingerprint) and the new one arrives here through
``cp-connections``. Refreshing here would race the keeper: refresh tokens are single use.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from blametrail_common.crypto import SecretBox, SecretBoxError
from blametrail_common.events import ConnectionStateV1, new_event
from blametrail_common.events.installations import TokenRefreshRequestedV1, token_fingerprint
from blametrail_common.kafka import EventProducer
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.sentry_api import SentryCredentials

__all__ = ["ConnectionCredentials"]

log = logging.getLogger(__name__)


class ConnectionCredentials:
    """A connection's Sentry credentials (the enricher's ``CredentialSource``) over the
    connections table; ``request_refresh`` asks the token keeper for a new OAuth token."""

    def __init__(
        self,
        table: CompactedTable[ConnectionStateV1],
        box: SecretBox,
        producer: EventProducer | None = None,
    ) -> None:
        self._table, self._box, self._producer = table, box, producer
        # connection id -> (its token as stored, decrypted): a call to Sentry decrypted it anew,
        # 5% of the enricher's CPU in a storm. One entry a connection; a new token is a new
        # ciphertext, which is decrypted again.
        self._tokens: dict[str, tuple[str, str]] = {}

    def credentials(self, connection_id: str) -> SentryCredentials | None:
        conn = self._table.get(connection_id)
        if conn is None or not conn.enabled or conn.auth_token_enc is None:
            self._tokens.pop(connection_id, None)
            return None
        known = self._tokens.get(connection_id)
        if known is not None and known[0] == conn.auth_token_enc:
            token = known[1]
        else:
            try:
                token = self._box.decrypt(conn.auth_token_enc)
            except SecretBoxError:
                log.error("connection token undecryptable", extra={"connection_id": connection_id})
                return None
            self._tokens[connection_id] = (conn.auth_token_enc, token)
        return SentryCredentials(conn.api_base_url, conn.sentry_org_slug, token)

    async def request_refresh(self, connection_id: str, rejected: SentryCredentials) -> None:
        conn = self._table.get(connection_id)
        if conn is None or conn.mode != "oauth" or self._producer is None:
            # Internal-integration tokens never expire: a 401 means a revoked token, which only
            # a person can fix (PATCH the connection's auth_token).
            log.warning("sentry rejected the token", extra={"connection_id": connection_id})
            return
        request = TokenRefreshRequestedV1(
            connection_id=connection_id,
            rejected_token=token_fingerprint(rejected.token),
            reason="sentry answered 401",
            requested_at=datetime.now(UTC),
        )
        await self._producer.send(
            "oauth-refresh-requests",
            new_event(request, key=connection_id, tenant=conn.tenant_id),
        )
        log.info("early token refresh requested", extra={"connection_id": connection_id})
