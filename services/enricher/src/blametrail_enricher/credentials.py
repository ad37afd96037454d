"""Sentry credentials per connection, learnt from ``cp-connections`` (tokens arrive encrypted)."""

from __future__ import annotations

import logging

from blametrail_common.crypto import SecretBox, SecretBoxError
from blametrail_common.events import ConnectionStateV1
from blametrail_common.kafka.table import CompactedTable

from blametrail_enricher.client import SentryCredentials

__all__ = ["ConnectionCredentials"]

log = logging.getLogger(__name__)


class ConnectionCredentials:
    """:class:`~blametrail_enricher.pipeline.CredentialSource` over the connections table."""

    def __init__(self, table: CompactedTable[ConnectionStateV1], box: SecretBox) -> None:
        self._table, self._box = table, box

    def credentials(self, connection_id: str) -> SentryCredentials | None:
        conn = self._table.get(connection_id)
        if conn is None or not conn.enabled or conn.auth_token_enc is None:
            return None
        try:
            token = self._box.decrypt(conn.auth_token_enc)
        except SecretBoxError:
            log.error("connection token undecryptable", extra={"connection_id": connection_id})
            return None
        return SentryCredentials(conn.api_base_url, conn.sentry_org_slug, token)

    async def request_refresh(self, connection_id: str) -> None:
        # Internal-integration tokens never expire: a 401 means a revoked token, which only a
        # person can fix. OAuth refresh (single owner, early-refresh requests) comes with the
        # public-integration work; until then a rejected token fails the enrichment.
        log.warning("sentry rejected the token", extra={"connection_id": connection_id})
