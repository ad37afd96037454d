"""What the OAuth parts share: the pool, the secret box, the Sentry app client, settings, the
clock, the counters an operator (or a test) reads, and the per-installation lock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from blametrail_common.crypto import SecretBox, SecretBoxError

from blametrail_mappings_api.sentry.client import SentryApp, TokenPair
from blametrail_mappings_api.settings import OAuthSettings
from blametrail_mappings_api.store.db import Conn, Pool, Row

__all__ = ["OAuthCore", "as_uuid", "one"]

log = logging.getLogger(__name__)


@dataclass
class OAuthCore:
    pool: Pool
    box: SecretBox
    app: SentryApp
    settings: OAuthSettings
    clock: Callable[[], float] = time.time
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    """Set to make the token keeper look for due refreshes now."""
    owner: bool = False
    """This process is the token keeper (it holds the keeper's lock)."""
    refreshes: int = 0
    recoveries: int = 0
    """Pairs obtained with the JWT-bearer grant (a call whose answer was lost)."""
    installation_events: int = 0

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    @contextlib.asynccontextmanager
    async def locked(self, installation: str) -> AsyncIterator[Conn]:
        """A connection holding the installation's session advisory lock (autocommit: what
        it commits inside stays committed even if the caller fails after). The lock is taken
        inside ``try``: a caller cancelled just as it was granted still releases it."""
        key = f"sentry-installation:{installation}"
        async with self.pool.connection() as conn:
            await conn.set_autocommit(True)
            await conn.execute("SET lock_timeout = '30s'")
            try:
                await conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
                yield conn
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
                await conn.execute("RESET lock_timeout")
                await conn.set_autocommit(False)

    def enc(self, pair: TokenPair) -> tuple[str, str, datetime]:
        return self.box.encrypt(pair.token), self.box.encrypt(pair.refresh_token), pair.expires_at

    def dec(self, value: str) -> str:
        try:
            return self.box.decrypt(value)
        except SecretBoxError:
            log.error("a stored sentry token is undecryptable with BLAMETRAIL_SECRET_KEYS")
            raise


async def one(conn: Conn, sql: str, *args: Any) -> Row | None:
    cur = await conn.execute(sql.encode(), args)
    return await cur.fetchone()


def as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
