"""Organizations and their API keys (see :mod:`~blametrail_mappings_api.auth` for the key format).
A key has a name and a role; keys made by the CLI (or before roles) are admin keys. A key records
the user it was made by (``created_by_user_id``; a key made by a key inherits that key's user, a
CLI key has none): disabling the user revokes it (:func:`revoke_made_by_in`)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from blametrail_mappings_api import auth
from blametrail_mappings_api.auth import Credential, Principal
from blametrail_mappings_api.errors import Conflict, NotFound
from blametrail_mappings_api.store import db
from blametrail_mappings_api.store.db import Conn, Page, Pool, Row

__all__ = ["TOUCH_EVERY", "ApiKeyStore", "revoke_made_by_in"]

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
        key, _ = await self.create_in(org_id, "", "admin", None)
        return key

    async def create_in(
        self, org: str, name: str, role: str, creator: Principal | None
    ) -> tuple[str, Row]:
        """A new key of organization ``org`` with ``name`` and ``role``, made by ``creator``
        (``None``: the CLI): ``(key, row)``. The creating user (a key's: the user that key was
        made by) is read under a share lock, so a disable running at the same time either sees
        this key and revokes it or is seen here: :class:`Conflict` for a disabled user."""
        key, prefix = auth.new_key()
        async with db.transaction(self.pool) as conn:
            user_id = await _creator_user_in(conn, creator)
            cur = await conn.execute(
                "INSERT INTO api_keys (id, org_id, prefix, key_sha256, name, role,"
                " created_by_user_id) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *",
                (uuid.uuid4(), org, prefix, auth.key_hash(key), name, role, user_id),
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


async def _creator_user_in(conn: Conn, creator: Principal | None) -> str | None:
    """The user a key made by ``creator`` belongs to, share-locked; :class:`Conflict` if that
    user is disabled (a disable committed after ``creator`` was authenticated)."""
    if creator is None:
        return None
    if creator.kind == "user":
        user_id: str | None = creator.id
    else:
        cur = await conn.execute(
            "SELECT created_by_user_id FROM api_keys WHERE id = %s", (creator.id,)
        )
        found = await cur.fetchone()
        made_by = None if found is None else found["created_by_user_id"]
        user_id = None if made_by is None else str(made_by)
    if user_id is None:
        return None
    cur = await conn.execute("SELECT disabled FROM users WHERE id = %s FOR SHARE", (user_id,))
    user = await cur.fetchone()
    if user is None or user["disabled"]:
        raise Conflict("the user this key would be made by is disabled", {"user_id": user_id})
    return user_id


async def revoke_made_by_in(conn: Conn, user_id: str, now: datetime) -> int:
    """Revoke, in ``conn``'s transaction, every live key made by ``user_id``: how many."""
    cur = await conn.execute(
        "UPDATE api_keys SET revoked_at = %s WHERE created_by_user_id = %s AND revoked_at IS NULL",
        (now, user_id),
    )
    return cur.rowcount
