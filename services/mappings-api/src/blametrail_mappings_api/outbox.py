"""The transactional outbox: state events written with the change, relayed to Kafka after.

Writers call :func:`enqueue` inside their transaction. :class:`Relay` publishes unsent rows in
id order and marks them sent only after the broker acknowledged them; one relay at a time holds
the advisory lock, so order is kept. A relay killed between publish and mark publishes those rows
again: consumers treat the compacted topics as key -> latest tables, so duplicates are harmless.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
from blametrail_common.events import Envelope, encode
from blametrail_common.kafka import EventProducer
from psycopg.rows import DictRow
from psycopg_pool import AsyncConnectionPool

__all__ = ["Relay", "enqueue", "enqueue_tombstone"]

Pool = AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]

log = logging.getLogger(__name__)
_LOCK = 0x6274_6F62  # "btob"


async def enqueue(conn: psycopg.AsyncConnection[Any], topic: str, event: Envelope[Any]) -> None:
    await conn.execute(
        "INSERT INTO outbox (topic, key, value) VALUES (%s, %s, %s)",
        (topic, event.key.encode(), encode(event)),
    )
    await conn.execute("NOTIFY outbox")


async def enqueue_tombstone(conn: psycopg.AsyncConnection[Any], topic: str, key: str) -> None:
    await conn.execute(
        "INSERT INTO outbox (topic, key, value) VALUES (%s, %s, NULL)", (topic, key.encode())
    )
    await conn.execute("NOTIFY outbox")


class Relay:
    def __init__(self, pool: Pool, producer: EventProducer, batch: int = 500) -> None:
        self.pool, self.producer, self.batch = pool, producer, batch
        self.running = False

    async def run(self, stop: asyncio.Event, dsn: str) -> None:
        """Relay until ``stop``; woken by NOTIFY, and every second regardless."""
        self.running = True
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener:
                await listener.execute("LISTEN outbox")
                while not stop.is_set():
                    while await self.relay_once():
                        pass
                    async for _ in listener.notifies(timeout=1.0, stop_after=1):
                        break
        finally:
            self.running = False

    async def relay_once(self) -> int:
        """Publish one batch of unsent rows; returns how many (0 when idle or another relay leads)."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS locked", (_LOCK,))
            if not ((await cur.fetchone()) or {}).get("locked"):
                return 0
            cur = await conn.execute(
                "SELECT id, topic, key, value FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT %s",
                (self.batch,),
            )
            rows = await cur.fetchall()
            if not rows:
                return 0
            futures = [
                await self.producer.producer.send(
                    self.producer.topic(r["topic"]),
                    key=bytes(r["key"]),
                    value=None if r["value"] is None else bytes(r["value"]),
                )
                for r in rows
            ]
            await asyncio.gather(*futures)
            await self._mark_sent(conn, [r["id"] for r in rows])
            return len(rows)

    async def _mark_sent(self, conn: psycopg.AsyncConnection[DictRow], ids: list[int]) -> None:
        await conn.execute("UPDATE outbox SET sent_at = now() WHERE id = ANY(%s)", (ids,))
