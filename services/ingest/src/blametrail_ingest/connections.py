"""Verification secrets of internal-integration connections, learnt from ``cp-connections``."""

from __future__ import annotations

import logging
from typing import Protocol

from blametrail_common.crypto import SecretBox, SecretBoxError
from blametrail_common.events import ConnectionStateV1
from blametrail_common.kafka.table import CompactedTable

__all__ = ["ConnectionSecrets", "SecretsLookup"]

log = logging.getLogger(__name__)


class SecretsLookup(Protocol):
    """Client secrets valid for a connection's webhooks; ``None`` for an unknown or disabled one."""

    def secrets_for(self, connection_id: str) -> list[str] | None: ...

    def ready(self) -> bool: ...


class ConnectionSecrets:
    """:class:`SecretsLookup` over the compacted table; decrypted secrets cached per version."""

    def __init__(self, table: CompactedTable[ConnectionStateV1], box: SecretBox | None) -> None:
        self._table, self._box = table, box
        self._cache: dict[str, tuple[object, list[str]]] = {}
        self._loaded = False

    def ready(self) -> bool:
        """True once the table has caught up with the end offsets read at its start, and from
        then on: a table that has loaded stays loaded while its reader reconnects (its rows stay
        served; only updates wait)."""
        if not self._loaded and self._table.ready.is_set():
            self._loaded = True
        return self._loaded

    def secrets_for(self, connection_id: str) -> list[str] | None:
        conn = self._table.get(connection_id)
        if conn is None or not conn.enabled or conn.mode != "internal" or self._box is None:
            return None
        cached = self._cache.get(connection_id)
        if cached is not None and cached[0] == conn.updated_at:
            return cached[1]
        try:
            secrets = [self._box.decrypt(s) for s in conn.client_secrets_enc]
        except SecretBoxError:
            log.error("connection secrets undecryptable", extra={"connection_id": connection_id})
            return None
        self._cache[connection_id] = (conn.updated_at, secrets)
        return secrets
