"""The connections to sweep and their Sentry credentials, from ``cp-connections`` (tokens
arrive encrypted; the control plane's token keeper owns OAuth refreshes)."""

from __future__ import annotations

import logging

from blametrail_common.crypto import SecretBox, SecretBoxError
from blametrail_common.events import ConnectionStateV1
from blametrail_common.kafka import EventProducer
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.sentry_api import SentryCredentials
from blametrail_common.sentry_credentials import ConnectionCredentials

__all__ = ["Connections"]

log = logging.getLogger(__name__)


class Connections:
    def __init__(
        self,
        table: CompactedTable[ConnectionStateV1],
        box: SecretBox,
        producer: EventProducer | None = None,
    ) -> None:
        self.table, self._box = table, box
        self._keeper = ConnectionCredentials(table, box, producer)

    def sweepable(self) -> list[ConnectionStateV1]:
        """Enabled connections holding a token, in a stable order."""
        return sorted(
            (c for c in self.table.values() if c.enabled and c.auth_token_enc),
            key=lambda c: c.connection_id,
        )

    def get(self, connection_id: str) -> ConnectionStateV1 | None:
        return self.table.get(connection_id)

    def credentials(self, conn: ConnectionStateV1) -> SentryCredentials | None:
        if conn.auth_token_enc is None:
            return None
        try:
            token = self._box.decrypt(conn.auth_token_enc)
        except SecretBoxError:
            log.error("connection token undecryptable", extra={"connection_id": conn.connection_id})
            return None
        return SentryCredentials(conn.api_base_url, conn.sentry_org_slug, token)

    async def request_refresh(self, connection_id: str, rejected: SentryCredentials) -> None:
        """Sentry answered 401 with ``rejected``: ask the token keeper for an early refresh
        (OAuth; see :mod:`blametrail_common.sentry_credentials`); never refreshed here."""
        await self._keeper.request_refresh(connection_id, rejected)
