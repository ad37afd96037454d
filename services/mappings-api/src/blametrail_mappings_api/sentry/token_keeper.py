"""The token keeper: one owner across replicas (a session advisory lock) refreshes each OAuth
connection's token :attr:`~blametrail_mappings_api.settings.OAuthSettings.refresh_margin_s`
before it expires, and at once when a reader (the enricher) reported a rejected token on
``oauth-refresh-requests``. Refresh is single use and deletes the old pair, so the keeper commits
``refresh_started_at`` *before* the call: found set later, the outcome is unknown and the
JWT-bearer grant recovers a fresh pair. Each new token goes out encrypted on ``cp-connections``."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import psycopg
from blametrail_common.events.installations import token_fingerprint

from blametrail_mappings_api.sentry.client import SentryAuthRefused, SentryUnavailable, TokenPair
from blametrail_mappings_api.sentry.oauth_core import OAuthCore, as_uuid, one
from blametrail_mappings_api.store.connections import publish_connection
from blametrail_mappings_api.store.db import Row

__all__ = ["KEEPER_LOCK", "TokenKeeper"]

log = logging.getLogger(__name__)
KEEPER_LOCK = 0x6274_6B70  # "btkp": one token keeper at a time


class TokenKeeper:
    def __init__(self, core: OAuthCore) -> None:
        self.core = core

    async def request_refresh(self, connection_id: str, rejected: str) -> bool:
        """Mark an early refresh when ``rejected`` names the current token (else it is moot)."""
        core = self.core
        async with core.pool.connection() as conn, conn.transaction():
            row = await one(
                conn,
                "SELECT auth_token_enc FROM sentry_connections WHERE id = %s AND mode = 'oauth'"
                " AND enabled AND auth_token_enc IS NOT NULL FOR UPDATE",
                as_uuid(connection_id),
            )
            if row is None or token_fingerprint(core.dec(row["auth_token_enc"])) != rejected:
                return False
            await conn.execute(
                "UPDATE sentry_connections SET refresh_requested_at = %s WHERE id = %s",
                (core.now(), as_uuid(connection_id)),
            )
        core.wake.set()
        return True

    async def due(self) -> list[str]:
        """Connections to refresh now: expiring within the margin, asked for, or interrupted."""
        core = self.core
        async with core.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id FROM sentry_connections WHERE mode = 'oauth' AND enabled"
                " AND auth_token_enc IS NOT NULL AND (token_expires_at < %s"
                " OR refresh_requested_at IS NOT NULL OR refresh_started_at IS NOT NULL)"
                " ORDER BY token_expires_at",
                (core.now() + timedelta(seconds=core.settings.refresh_margin_s),),
            )
            return [str(r["id"]) for r in await cur.fetchall()]

    async def refresh(self, connection_id: str) -> Row | None:
        """Refresh one connection's pair (call only as the keeper: refreshes must not overlap)."""
        core = self.core
        async with core.pool.connection() as conn:
            async with conn.transaction():
                row = await one(
                    conn,
                    "SELECT * FROM sentry_connections WHERE id = %s AND mode = 'oauth'"
                    " AND enabled FOR UPDATE",
                    connection_id,
                )
                if row is None or row["installation_uuid"] is None:
                    return None
                await conn.execute(
                    "UPDATE sentry_connections SET refresh_started_at = %s WHERE id = %s",
                    (core.now(), connection_id),
                )
            installation = str(row["installation_uuid"])
            pair = await self._new_pair(connection_id, installation, row)
            async with conn.transaction():
                saved = await one(
                    conn,
                    "UPDATE sentry_connections SET auth_token_enc = %s, refresh_token_enc = %s,"
                    " token_expires_at = %s, refresh_started_at = NULL,"
                    " refresh_requested_at = NULL, token_refreshed_at = now(), updated_at = now()"
                    " WHERE id = %s AND enabled AND installation_uuid = %s RETURNING *",
                    *core.enc(pair),
                    connection_id,
                    installation,
                )
                if saved is not None:
                    await publish_connection(conn, saved)
            core.refreshes += 1
            log.info(
                "sentry token refreshed",
                extra={"connection_id": connection_id, "expires_at": pair.expires_at.isoformat()},
            )
            return saved

    async def _new_pair(self, connection_id: str, installation: str, row: Row) -> TokenPair:
        """The refresh grant, unless an earlier refresh was interrupted (its outcome unknown) or
        is refused: then the JWT-bearer grant."""
        core = self.core
        if row["refresh_started_at"] is None and row["refresh_token_enc"] is not None:
            try:
                return await core.app.refresh(installation, core.dec(row["refresh_token_enc"]))
            except SentryAuthRefused as exc:  # e.g. used by a refresh whose answer we lost
                log.warning(
                    "refresh token refused; recovering with the JWT-bearer grant",
                    extra={"connection_id": connection_id, "status": exc.status},
                )
        core.recoveries += 1
        return await core.app.recover(installation, core.clock())

    async def keep(self, stop: asyncio.Event, dsn: str) -> None:
        """Be the token keeper while holding :data:`KEEPER_LOCK`; stand by otherwise."""
        core = self.core
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as lock:
                    cur = await lock.execute("SELECT pg_try_advisory_lock(%s)", (KEEPER_LOCK,))
                    got = await cur.fetchone()
                    core.owner = bool(got and got[0])
                    while core.owner and not stop.is_set():
                        await self.refresh_due()
                        await _wait_any(stop, core.wake, core.settings.check_s)
                        core.wake.clear()
                        await lock.execute("SELECT 1")  # still holding the lock?
            except (psycopg.Error, OSError) as exc:
                log.warning("token keeper lost its database session", extra={"error": str(exc)})
            except Exception:
                log.exception("token keeper failed; starting over")
            core.owner = False
            await _wait_any(stop, asyncio.Event(), core.settings.check_s)

    async def refresh_due(self) -> None:
        for connection_id in await self.due():
            try:
                await self.refresh(connection_id)
            except (SentryAuthRefused, SentryUnavailable) as exc:
                log.error(
                    "sentry token refresh failed; retrying at the next check",
                    extra={"connection_id": connection_id, "error": str(exc)},
                )
            except psycopg.Error:
                raise  # the keeper's session may be gone: let keep() start over
            except (
                Exception
            ):  # one bad connection (an undecryptable token...) must not stop the rest
                log.exception("sentry token refresh failed", extra={"connection_id": connection_id})


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, timeout_s: float) -> None:
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
