"""The sign-in throttle: failed attempts counted per key (an account, a client address) in a
fixed window, in Postgres so every API replica sees the same counts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from blametrail_mappings_api.store.db import Conn, Pool

__all__ = ["Limit", "LoginThrottle"]


@dataclass(frozen=True)
class Limit:
    """At most ``failures`` failed attempts per ``window`` for keys starting ``kind:``."""

    kind: str
    failures: int
    window: timedelta


class LoginThrottle:
    """An attempt is counted BEFORE its password is checked (:meth:`attempt`: one atomic
    increment-and-read per key), so parallel attempts cannot all pass a check made before any of
    them failed; a refused attempt (429) and a success take their attempt back."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def attempt(
        self, keys: dict[str, Limit], now: datetime
    ) -> tuple[int | None, dict[str, datetime]]:
        """Count an attempt against each of ``keys`` (key: its limit; a window over starts
        again). ``(seconds until allowed, None when allowed now; each key's window start)``:
        the attempt is allowed while every count, this one included, is within its limit."""
        windows: dict[str, datetime] = {}
        waits: list[float] = []
        async with self.pool.connection() as conn:
            for key in sorted(keys):  # one order: two attempts never wait on each other's rows
                limit = keys[key]
                cur = await conn.execute(
                    "INSERT INTO login_throttle (key, failures, window_start) VALUES (%s, 1, %s)"
                    " ON CONFLICT (key) DO UPDATE SET"
                    " failures = CASE WHEN login_throttle.window_start + %s <= %s THEN 1"
                    "   ELSE login_throttle.failures + 1 END,"
                    " window_start = CASE WHEN login_throttle.window_start + %s <= %s THEN %s"
                    "   ELSE login_throttle.window_start END"
                    " RETURNING failures, window_start",
                    (key, now, limit.window, now, limit.window, now, now),
                )
                row = await cur.fetchone()
                assert row is not None
                windows[key] = row["window_start"]
                if row["failures"] > limit.failures:
                    waits.append((row["window_start"] + limit.window - now).total_seconds())
            if waits:  # refused: no password is checked, so it is no attempt; take it back
                await _take_back(conn, windows)
        return (max(1, math.ceil(max(waits))) if waits else None), windows

    async def succeeded(self, reset: str, windows: dict[str, datetime]) -> None:
        """A sign-in succeeded: ``reset`` (the account) starts from nothing; every other key
        of ``windows`` gets its attempt back (unless its window started again meanwhile)."""
        async with self.pool.connection() as conn:
            await conn.execute("DELETE FROM login_throttle WHERE key = %s", (reset,))
            await _take_back(conn, {k: v for k, v in windows.items() if k != reset})

    async def purge(self, now: datetime, window: timedelta) -> int:
        """Delete the rows whose window ended before ``now`` (they count nothing any more)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM login_throttle WHERE window_start + %s <= %s", (window, now)
            )
            return cur.rowcount


async def _take_back(conn: Conn, windows: dict[str, datetime]) -> None:
    """One attempt less on each key, unless its window started again meanwhile."""
    for key in sorted(windows):
        await conn.execute(
            "UPDATE login_throttle SET failures = failures - 1"
            " WHERE key = %s AND window_start = %s AND failures > 0",
            (key, windows[key]),
        )
