"""The sign-in throttle: failed attempts counted per key (an account, a client address) in a
fixed window, in Postgres so every API replica sees the same counts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from blametrail_mappings_api.store.db import Pool

__all__ = ["Limit", "LoginThrottle"]


@dataclass(frozen=True)
class Limit:
    """At most ``failures`` failed attempts per ``window`` for keys starting ``kind:``."""

    kind: str
    failures: int
    window: timedelta


class LoginThrottle:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def retry_after(self, keys: dict[str, Limit], now: datetime) -> int | None:
        """Seconds until an attempt for ``keys`` (key: its limit) is allowed, ``None`` now."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT key, failures, window_start FROM login_throttle WHERE key = ANY(%s)",
                (list(keys),),
            )
            rows = await cur.fetchall()
        waits = [
            (r["window_start"] + keys[r["key"]].window - now).total_seconds()
            for r in rows
            if r["failures"] >= keys[r["key"]].failures
            and r["window_start"] + keys[r["key"]].window > now
        ]
        return max(1, math.ceil(max(waits))) if waits else None

    async def failed(self, keys: dict[str, Limit], now: datetime) -> None:
        """Count a failed attempt against each of ``keys`` (a window over starts again)."""
        async with self.pool.connection() as conn:
            for key, limit in keys.items():
                await conn.execute(
                    "INSERT INTO login_throttle (key, failures, window_start) VALUES (%s, 1, %s)"
                    " ON CONFLICT (key) DO UPDATE SET"
                    " failures = CASE WHEN login_throttle.window_start + %s <= %s THEN 1"
                    "   ELSE login_throttle.failures + 1 END,"
                    " window_start = CASE WHEN login_throttle.window_start + %s <= %s THEN %s"
                    "   ELSE login_throttle.window_start END",
                    (key, now, limit.window, now, limit.window, now, now),
                )

    async def reset(self, key: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("DELETE FROM login_throttle WHERE key = %s", (key,))
