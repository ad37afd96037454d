"""Organizations and their API keys (see :mod:`~blametrail_mappings_api.auth` for the key format).
A key has a name and a role; keys made by the CLI (or before roles) are admin keys."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from blametrail_mappings_api import auth
from blametrail_mappings_api.auth import Credential, Principal
from blametrail_mappings_api.errors import NotFound
from blametrail_mappings_api.store import db
from blametrail_mappings_api.store.db import Page, Pool, Row

__all__ = ["TOUCH_EVERY", "ApiKeyStore"]

TOUCH_EVERY = timedelta(minutes=1)
"""``last_used_at`` is written at most this often per key or session (no write per request)."""


class ApiKeyStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def create(self, org_slug: str) -> str:
        """A new admin key of ``org_slug`` (the organization is created if new); shown once."""
        async with db.transaction(self.pool) as conn:
            cur = await conn.execute(
                "INSERT INTO organizations (id, slug, name) VALUES (%s, %s, %s)"
                " ON CONFLICT (slug) DO UPDATE SET slug = EXCLUDED.slug RETURNING id",
                (uuid.uuid4(), org_slug, org_slug),
            )
            org_id = str(((await cur.fetchone()) or {})["id"])
        key, _ = await self.create_in(org_id, "", "admin")
        return key

    async def create_in(self, org: str, name: str, role: str) -> tuple[str, Row]:
        """A new key of organization ``org`` with ``name`` and ``role``: ``(key, row)``."""
        key, prefix = auth.new_key()
        async with db.transaction(self.pool) as conn:
            cur = await conn.execute(
                "INSERT INTO api_keys (id, org_id, prefix, key_sha256, name, role)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING *",
                (uuid.uuid4(), org, prefix, auth.key_hash(key), name, role),
            )
            row: Row | None = await cur.fetchone()
        assert row is not None
        return key, row

    async def list(self, org: str, cursor: str | None, limit: int) -> Page:
        return await db.page(self.pool, "api_keys", org, cursor, limit, "", ())

    async def revoke(self, org: str, key_id: str, now: datetime) -> None:
        """Revoke ``org``'s key ``key_id`` (at once: the next call with it is a 401); revoking
        a revoked key is a no-op; :class:`NotFound` for an unknown or another org's key."""
        async with db.transaction(self.pool) as conn:
            cur = await conn.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, %s)"
                " WHERE org_id = %s AND id = %s RETURNING id",
                (now, org, db.uuid_or_404(key_id, "api key")),
            )
            if await cur.fetchone() is None:
                raise NotFound("api key")

    async def principal(self, cred: Credential, now: datetime) -> Principal | None:
        """Who a live key acts as (its ``last_used_at`` touched at most once a minute)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT k.id, k.org_id, k.key_sha256, k.name, k.role, k.prefix, k.last_used_at,"
                " o.slug FROM api_keys k JOIN organizations o ON o.id = k.org_id"
                " WHERE k.prefix = %s AND k.revoked_at IS NULL",
                (cred.prefix,),
            )
            row = await cur.fetchone()
            if row is None or not auth.key_matches(cred.token, row["key_sha256"]):
                return None
            if row["last_used_at"] is None or now - row["last_used_at"] >= TOUCH_EVERY:
                await conn.execute(
                    "UPDATE api_keys SET last_used_at = %s WHERE id = %s", (now, row["id"])
                )
                await conn.commit()
        return Principal(
            "api_key",
            str(row["id"]),
            row["name"] or f"API key {row['prefix']}",
            row["role"],
            str(row["org_id"]),
            org_slug=row["slug"],
        )
