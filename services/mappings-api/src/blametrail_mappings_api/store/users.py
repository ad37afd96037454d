"""Users: one organization each, a role, an argon2id password hash (never the password), an
email unique across the installation whatever its case. Disabling a user revokes their sessions;
the last enabled admin of an organization can be neither demoted nor disabled."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from blametrail_mappings_api.errors import Conflict, NotFound
from blametrail_mappings_api.store import db
from blametrail_mappings_api.store.api_keys import revoke_made_by_in
from blametrail_mappings_api.store.db import Page, Pool, Row
from blametrail_mappings_api.store.sessions import revoke_all_in

__all__ = ["UserStore"]


class UserStore:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def create(self, org: str, email: str, name: str, role: str, password_hash: str) -> Row:
        values = {
            "id": uuid.uuid4(),
            "org_id": org,
            "email": email,
            "name": name,
            "role": role,
            "password_hash": password_hash,
        }
        async with db.transaction(self.pool) as conn:
            return await db.insert_unique(
                # the same words whichever organization holds the address (no enumeration)
                conn,
                "users",
                values,
                "this email cannot be used",
            )

    async def list(self, org: str, cursor: str | None, limit: int) -> Page:
        return await db.page(self.pool, "users", org, cursor, limit, "", ())

    async def get(self, org: str, user_id: str) -> Row:
        return await db.get(self.pool, "users", org, user_id, "user")

    async def by_email(self, email: str) -> Row | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT * FROM users WHERE lower(email) = lower(%s)", (email,))
            row: Row | None = await cur.fetchone()
        return row

    async def set_hash(self, user_id: str, password_hash: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE users SET password_hash = %s WHERE id = %s", (password_hash, user_id)
            )

    async def update(self, org: str, user_id: str, changes: dict[str, Any], now: datetime) -> Row:
        """Apply ``changes`` (name, role, disabled); :class:`Conflict` (409) if it would leave
        the organization without an enabled admin; disabling revokes every session and every API
        key the user made (issue 17 M5), in the same transaction."""
        async with db.transaction(self.pool) as conn:
            admins = await conn.execute(
                "SELECT id FROM users WHERE org_id = %s AND role = 'admin' AND NOT disabled"
                " ORDER BY id FOR UPDATE",
                (org,),
            )
            enabled_admins = {str(r["id"]) for r in await admins.fetchall()}
            current = await db.get_in(conn, "users", org, user_id, "user", lock=True)
            demoted = changes.get("role", current["role"]) != "admin"
            disabled = changes.get("disabled", current["disabled"])
            last = enabled_admins == {str(current["id"])}
            if last and (demoted or disabled):
                raise Conflict(
                    "this is the organization's last enabled admin: make another admin first",
                    {"id": str(current["id"]), "email": current["email"]},
                )
            row = await db.update(conn, "users", org, user_id, changes, "user", "")
            if disabled and not current["disabled"]:
                await revoke_all_in(conn, str(current["id"]), now)
                await revoke_made_by_in(conn, str(current["id"]), now)
            return row

    async def disable_by_email(self, email: str, now: datetime) -> Row:
        """The CLI's ``users disable``: :class:`NotFound` for an unknown email."""
        row = await self.by_email(email)
        if row is None:
            raise NotFound("user")
        return await self.update(str(row["org_id"]), str(row["id"]), {"disabled": True}, now)

    async def org_id(self, slug: str, create: bool) -> str:
        """The id of organization ``slug`` (created when ``create``); :class:`NotFound` else."""
        async with db.transaction(self.pool) as conn:
            if create:
                await conn.execute(
                    "INSERT INTO organizations (id, slug, name) VALUES (%s, %s, %s)"
                    " ON CONFLICT (slug) DO NOTHING",
                    (uuid.uuid4(), slug, slug),
                )
            cur = await conn.execute("SELECT id FROM organizations WHERE slug = %s", (slug,))
            row = await cur.fetchone()
        if row is None:
            raise NotFound("organization")
        return str(row["id"])

    async def org_slug(self, org: str) -> str:
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT slug FROM organizations WHERE id = %s", (org,))
            row = await cur.fetchone()
        return str(row["slug"]) if row else ""
