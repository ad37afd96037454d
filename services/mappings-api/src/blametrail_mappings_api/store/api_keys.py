"""Organizations and their API keys (see :mod:`~blametrail_mappings_api.auth` for the key format)."""

from __future__ import annotations

import uuid

from blametrail_mappings_api import auth
from blametrail_mappings_api.store.db import Pool

__all__ = ["ApiKeyStore"]


class ApiKeyStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def create(self, org_slug: str) -> str:
        """A new key of ``org_slug`` (the organization is created if new); shown once."""
        key, prefix = auth.new_key()
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO organizations (id, slug, name) VALUES (%s, %s, %s)"
                " ON CONFLICT (slug) DO UPDATE SET slug = EXCLUDED.slug RETURNING id",
                (uuid.uuid4(), org_slug, org_slug),
            )
            org_id = ((await cur.fetchone()) or {})["id"]
            await conn.execute(
                "INSERT INTO api_keys (id, org_id, prefix, key_sha256) VALUES (%s, %s, %s, %s)",
                (uuid.uuid4(), org_id, prefix, auth.key_hash(key)),
            )
        return key

    async def org_for(self, authorization: str | None) -> str | None:
        """The organization an ``Authorization: Bearer`` header's live key belongs to."""
        parsed = auth.parse_key(authorization)
        if parsed is None:
            return None
        key, prefix = parsed
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT org_id, key_sha256 FROM api_keys WHERE prefix = %s AND revoked_at IS NULL",
                (prefix,),
            )
            row = await cur.fetchone()
        return str(row["org_id"]) if row and auth.key_matches(key, row["key_sha256"]) else None
