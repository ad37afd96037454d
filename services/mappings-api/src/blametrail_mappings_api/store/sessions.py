"""Sessions of signed-in users: opaque tokens (``bts_<prefix>_<secret>``, only SHA-256 stored),
an idle and an absolute limit, revocable one by one or all of a user's at once.

Every check reads the user too: a disabled user, or one whose role changed, is seen at the
next call. ``last_used_at`` (which the idle limit counts from) is written at most once a minute.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from blametrail_mappings_api import auth
from blametrail_mappings_api.auth import Credential, Principal
from blametrail_mappings_api.store.api_keys import TOUCH_EVERY
from blametrail_mappings_api.store.db import Conn, Pool, Row

__all__ = ["EXPIRED", "SessionLimits", "SessionStore"]

EXPIRED = "expired"
"""What :meth:`SessionStore.principal` answers for a session that was one but is over."""


@dataclass(frozen=True)
class SessionLimits:
    idle: timedelta = timedelta(hours=8)
    absolute: timedelta = timedelta(days=7)


class SessionStore:
    def __init__(self, pool: Pool, limits: SessionLimits | None = None) -> None:
        self.pool, self.limits = pool, limits or SessionLimits()

    async def issue(self, user_id: str, now: datetime) -> tuple[str, Row]:
        """A new session of ``user_id``: ``(token, row)``; the token is shown once."""
        token, prefix = auth.new_session_token()
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO user_sessions (id, user_id, prefix, token_sha256, created_at,"
                " expires_at, last_used_at) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *",
                (
                    uuid.uuid4(),
                    user_id,
                    prefix,
                    auth.key_hash(token),
                    now,
                    now + self.limits.absolute,
                    now,
                ),
            )
            row: Row | None = await cur.fetchone()
        assert row is not None
        return token, row

    async def purge(self, now: datetime, keep: timedelta) -> int:
        """Delete sessions over (absolute, idle or revoked) for longer than ``keep`` (until
        then a call with one is still told "Session expired")."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM user_sessions WHERE expires_at < %(gone)s"
                " OR last_used_at + %(idle)s < %(gone)s OR revoked_at < %(gone)s",
                {"gone": now - keep, "idle": self.limits.idle},
            )
            return cur.rowcount

    async def principal(self, cred: Credential, now: datetime) -> Principal | str | None:
        """The user a live session acts as; :data:`EXPIRED` for a session that is over (idle,
        absolute, revoked, or its user disabled); ``None`` for no session at all."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT s.id, s.token_sha256, s.expires_at, s.last_used_at, s.revoked_at,"
                " u.id AS user_id, u.org_id, u.email, u.name, u.role, u.disabled, o.slug"
                " FROM user_sessions s JOIN users u ON u.id = s.user_id"
                " JOIN organizations o ON o.id = u.org_id WHERE s.prefix = %s",
                (cred.prefix,),
            )
            row = await cur.fetchone()
            if row is None or not auth.key_matches(cred.token, row["token_sha256"]):
                return None
            over = (
                row["revoked_at"] is not None
                or row["disabled"]
                or now >= row["expires_at"]
                or now >= row["last_used_at"] + self.limits.idle
            )
            if over:
                return EXPIRED
            if now - row["last_used_at"] >= TOUCH_EVERY:
                await conn.execute(
                    "UPDATE user_sessions SET last_used_at = %s WHERE id = %s", (now, row["id"])
                )
                await conn.commit()
        return Principal(
            "user",
            str(row["user_id"]),
            row["name"],
            row["role"],
            str(row["org_id"]),
            row["email"],
            str(row["id"]),
            row["slug"],
        )

    async def revoke(self, session_id: str, now: datetime) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE user_sessions SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
                (now, session_id),
            )

    async def revoke_all(self, user_id: str, now: datetime) -> None:
        async with self.pool.connection() as conn:
            await revoke_all_in(conn, user_id, now)


async def revoke_all_in(conn: Conn, user_id: str, now: datetime) -> None:
    """Revoke every live session of ``user_id`` (in ``conn``'s transaction)."""
    await conn.execute(
        "UPDATE user_sessions SET revoked_at = %s WHERE user_id = %s AND revoked_at IS NULL",
        (now, user_id),
    )
