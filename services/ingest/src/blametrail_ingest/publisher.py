"""Publishing accepted webhooks: to Kafka when it answers in time, else to the durable spool.

Contract of :meth:`WebhookPublisher.publish`: when it returns, the record is either
acknowledged by the broker (``acks=all``) or fsync'd in the spool; it raises
:class:`Unavailable` only when neither worked (the route answers 503). While the spool holds a
backlog, new records join the spool too, so per-issue order survives an outage; the drainer
forwards the backlog in order as soon as the broker is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

from aiokafka.errors import KafkaError
from blametrail_common.kafka import EventProducer
from prometheus_client import Gauge, Histogram

from blametrail_ingest.spool import Spool, SpoolError

__all__ = ["Unavailable", "WebhookPublisher"]

log = logging.getLogger(__name__)

PUBLISH_SECONDS = Histogram(
    "blametrail_ingest_publish_seconds",
    "Time to a durable publish",
    ["path"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
SPOOL_DEPTH = Gauge("blametrail_ingest_spool_bytes", "Bytes waiting in the spool")
HEADERS = [("bt-type", b"sentry.webhook.received"), ("bt-version", b"1")]
TOPIC = "sentry-webhooks-raw"


class Unavailable(Exception):
    """Neither Kafka nor the spool could take the record."""


class WebhookPublisher:
    def __init__(self, producer: EventProducer, spool: Spool, timeout_s: float) -> None:
        self.producer, self.spool, self.timeout_s = producer, spool, timeout_s
        self.connected = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start the producer in the background (ingest must serve while Kafka is down) and the drainer."""
        SPOOL_DEPTH.set(self.spool.pending_bytes())
        self._tasks = [asyncio.create_task(self._connect()), asyncio.create_task(self._drain())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.connected:
            await self.producer.stop()

    async def publish(self, key: bytes, value: bytes) -> Literal["kafka", "spool"]:
        began = time.perf_counter()
        path: Literal["kafka", "spool"] = "kafka"
        if self.connected and self.spool.is_empty():
            try:
                async with asyncio.timeout(
                    self.timeout_s
                ):  # no extra task per request, unlike wait_for
                    await self.producer.send_raw(TOPIC, key, value, HEADERS)
            except (TimeoutError, KafkaError) as exc:
                log.warning(
                    "publish to kafka failed, spooling", extra={"error": type(exc).__name__}
                )
                path = "spool"
        else:
            path = "spool"
        if path == "spool":
            try:
                await self.spool.append(key, value)
            except SpoolError as exc:
                raise Unavailable(str(exc)) from exc
            SPOOL_DEPTH.set(self.spool.pending_bytes())
            self._wake.set()
        PUBLISH_SECONDS.labels(path).observe(time.perf_counter() - began)
        return path

    async def _connect(self) -> None:
        delay = 0.2
        while not self.connected:
            try:
                await self.producer.start()
                self.connected = True
                self._wake.set()
            except KafkaError as exc:
                log.warning("kafka unreachable, retrying", extra={"error": type(exc).__name__})
                await self.producer.stop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _drain(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.connected:
                batch = await asyncio.to_thread(self.spool.read_batch)
                if not batch:
                    break
                try:
                    await self.producer.send_many_raw(
                        TOPIC, [(r.key, r.value) for r in batch], HEADERS
                    )
                except KafkaError as exc:
                    log.warning("spool drain paused", extra={"error": type(exc).__name__})
                    await asyncio.sleep(1.0)
                    self._wake.set()
                    break
                await asyncio.to_thread(self.spool.mark_forwarded, batch[-1])
                SPOOL_DEPTH.set(self.spool.pending_bytes())

    async def drained(self, timeout_s: float) -> bool:
        """Wait until the spool is empty (tests and graceful shutdown)."""
        deadline = time.monotonic() + timeout_s
        while not self.spool.is_empty():
            if time.monotonic() > deadline:
                return False
            self._wake.set()
            await asyncio.sleep(0.05)
        return True
