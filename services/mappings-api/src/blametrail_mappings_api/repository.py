"""The control plane's stores over one pool: :class:`Repository` composes the per-aggregate stores
of :mod:`blametrail_mappings_api.store` (keys, services, connections, mappings, deploys).

The REST routes use the stores (``repo.services.create(...)``); tools and tests build a
``Repository(pool, box)`` and use its two shortcuts for organizations' keys. The pool's types
and :func:`create_pool` are re-exported from :mod:`~blametrail_mappings_api.store.db`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from blametrail_common.crypto import SecretBox

from blametrail_mappings_api import auth
from blametrail_mappings_api.store.api_keys import ApiKeyStore
from blametrail_mappings_api.store.connections import ConnectionStore, publish_connection
from blametrail_mappings_api.store.db import Conn, Page, Pool, Row, create_pool, decode_cursor
from blametrail_mappings_api.store.deploys import DeployStore
from blametrail_mappings_api.store.mappings import MappingStore
from blametrail_mappings_api.store.services import ServiceStore

__all__ = [
    "Conn",
    "Page",
    "Pool",
    "Repository",
    "Row",
    "create_pool",
    "decode_cursor",
    "publish_connection",
]


class Repository:
    """Every aggregate store of the control plane, over ``pool``; ``box`` encrypts secrets."""

    def __init__(self, pool: Pool, box: SecretBox) -> None:
        self.pool, self.box = pool, box
        self.keys = ApiKeyStore(pool)
        self.services = ServiceStore(pool)
        self.connections = ConnectionStore(pool, box)
        self.mappings = MappingStore(pool)
        self.deploys = DeployStore(pool)

    async def create_api_key(self, org_slug: str) -> str:
        """A new API key of ``org_slug`` (created if new); printed once, stored as a hash."""
        return await self.keys.create(org_slug)

    async def org_for_key(self, authorization: str | None) -> str | None:
        """The organization of an ``Authorization: Bearer <key>`` header, if the key is live."""
        cred = auth.parse_credential(authorization)
        if cred is None or cred.kind != "key":
            return None
        found = await self.keys.principal(cred, datetime.now(UTC))
        return found.org if found else None
