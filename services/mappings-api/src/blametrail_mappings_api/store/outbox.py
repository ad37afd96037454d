"""The transactional outbox: state events written with the change, relayed to Kafka after.

Writers call :func:`enqueue` inside their transaction. :class:`Relay` publishes unsent rows in
id order and marks them sent only after the broker acknowledged them; one relay at a time holds
the advisory lock, so order is kept. A relay killed between publish and mark publishes those rows
again: consumers treat the compacted topics as key -> latest tables, so duplicates are harmless.

:meth:`Relay.run` ends with an error when Postgres or Kafka goes away; its caller runs it under
:func:`~blametrail_common.resilience.supervise`, which starts it again after a backoff. Each round
it exports how many rows wait and how old the oldest is, so "the outbox is not draining" can be
alerted on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
from blametrail_common.events import Envelope, encode
from blametrail_common.kafka import EventProducer
from blametrail_common.resilience import DEPENDENCIES, KAFKA, POSTGRES
from prometheus_client import Gauge
from psycopg.rows import DictRow

from blametrail_mappings_api.store.db import Pool

__all__ = ["Relay", "enqueue", "enqueue_tombstone"]

log = logging.getLogger(__name__)
_LOCK = 0x6274_6F62  # "btob"
POOL_TIMEOUT_S = 5.0
"""How long a relay round waits for a pooled connection (Postgres away: fail, back off, retry)."""

PENDING = Gauge("blametrail_outbox_pending", "Outbox rows not relayed to Kafka yet")
OLDEST_AGE = Gauge(
    "blametrail_outbox_oldest_age_seconds",
    "Age of the oldest outbox row not relayed yet (0 when the outbox is empty)",
)


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
        """Relay until ``stop``; woken by NOTIFY, and every second regardless. Raises when
        Postgres or Kafka fails (run it supervised)."""
        self.running = True
        try:
            async with await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, connect_timeout=5
            ) as listener:
                await listener.execute("LISTEN outbox")
                DEPENDENCIES.up(POSTGRES)
                while not stop.is_set():
                    while await self.relay_once():
                        pass
                    await self.measure()
                    async for _ in listener.notifies(timeout=1.0, stop_after=1):
                        break
        finally:
            self.running = False

    async def measure(self) -> tuple[int, float]:
        """Export (and return) the rows waiting and the oldest one's age in seconds."""
        async with self.pool.connection(timeout=POOL_TIMEOUT_S) as conn:
            cur = await conn.execute(  # both through the partial index of unsent rows
                "SELECT (SELECT count(*) FROM outbox WHERE sent_at IS NULL) AS n,"
                " coalesce((SELECT extract(epoch FROM now() - created_at) FROM outbox"
                " WHERE sent_at IS NULL ORDER BY id LIMIT 1), 0)::float8 AS age"
            )
            row = await cur.fetchone() or {"n": 0, "age": 0.0}
        pending, age = int(row["n"]), max(0.0, float(row["age"]))
        PENDING.set(pending)
        OLDEST_AGE.set(age)
        return pending, age

    async def relay_once(self) -> int:
        """Publish one batch of unsent rows; returns how many (0 when idle or another relay leads)."""
        async with self.pool.connection(timeout=POOL_TIMEOUT_S) as conn, conn.transaction():
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
            DEPENDENCIES.up(KAFKA)
            await self._mark_sent(conn, [r["id"] for r in rows])
            return len(rows)

    async def _mark_sent(self, conn: psycopg.AsyncConnection[DictRow], ids: list[int]) -> None:
        await conn.execute("UPDATE outbox SET sent_at = now() WHERE id = ANY(%s)", (ids,))
