"""Publishing accepted webhooks: to Kafka when it answers in time, else to the durable spool.

Contract of :meth:`WebhookPublisher.publish`: when it returns, the record is either
acknowledged by the broker (``acks=all``) or fsync'd in the spool; it raises
:class:`Unavailable` only when neither worked (the route answers 503). While the spool holds a
backlog, new records join the spool too, so per-issue order survives an outage; the drainer
forwards the backlog in order as soon as the broker is back.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson
from aiokafka.errors import KafkaError
from blametrail_common.kafka import EventProducer, create_producer
from blametrail_common.settings import KafkaSettings
from prometheus_client import Gauge, Histogram

from blametrail_ingest.settings import IngestSettings
from blametrail_ingest.spool import Spool

__all__ = ["Unavailable", "WebhookPublisher"]

log = logging.getLogger(__name__)

PUBLISH_SECONDS = Histogram(
    "blametrail_ingest_publish_seconds",
    "Time to a durable publish",
    ["path"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
KAFKA_SECONDS, SPOOL_SECONDS = PUBLISH_SECONDS.labels("kafka"), PUBLISH_SECONDS.labels("spool")
SPOOL_DEPTH = Gauge("blametrail_ingest_spool_bytes", "Bytes waiting in the spool")
SPOOL_AGE = Gauge(
    "blametrail_ingest_spool_oldest_age_seconds",
    "Age of the oldest spooled webhook not yet forwarded to Kafka (0 when the spool is empty)",
)
HEADERS = [("bt-type", b"sentry.webhook.received"), ("bt-version", b"1")]
TOPIC = "sentry-webhooks-raw"
# One record per Kafka request and below the broker's default max.message.bytes (1,048,588).
MAX_RECORD_BYTES = 1_000_000
Landed = Literal["kafka", "spool"]


def _produced_at(value: bytes) -> float | None:
    """When ingest made the spooled envelope (epoch seconds), for records left by an earlier
    process; ``None`` for anything unreadable."""
    try:
        return datetime.fromisoformat(orjson.loads(value)["produced_at"]).timestamp()
    except (ValueError, KeyError, TypeError):
        return None


class Unavailable(Exception):
    """Neither Kafka nor the spool could take the record."""


class TooLarge(Exception):
    """The record exceeds what one Kafka record may hold (the route answers 413)."""


@dataclass(eq=False, slots=True)
class _Batch:
    """Records that travel together; settled once, by the broker's ack or by the spool."""

    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    waiters: list[asyncio.Future[Landed]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    spooling: bool = False
    settled: bool = False
    direct: bool = False  # spool-only: records that arrived behind a backlog, never sent to Kafka

    def add(self, key: bytes, value: bytes) -> asyncio.Future[Landed]:
        waiter: asyncio.Future[Landed] = asyncio.get_running_loop().create_future()
        self.records.append((key, value))
        self.waiters.append(waiter)
        return waiter


class WebhookPublisher:
    """Group commit: the records of concurrent requests share one Kafka batch and one ack.

    A request appends its record to the open batch and waits on a future of its own. One
    shipper task hands the open batch to the producer whenever the producer can take it (while
    the previous batch of a partition is in flight, the open one fills up); the batch's ack
    wakes its waiters. One timer per batch enforces ``timeout_s``.

    When a batch fails or times out, every unsettled batch, oldest first through the open one,
    goes to the spool, and so does every new record until the spool is drained: one writer
    task appends them in that order, with one fsync per round (group commit for outages too).

    Back to Kafka under load: while new records keep arriving the spool is never empty, so one
    slow ack would send a whole storm through the spool. Once the drainer has forwarded a batch
    (Kafka answers again), new records are *held* in memory instead of spooled; when the spool
    is empty and nothing waits for its writer, they follow what was spooled on the Kafka path,
    so order survives. A hold that outlasts ``timeout_s`` (or a drain that fails) is spooled
    behind the rest, as before, and the next forwarded batch starts a new hold.
    """

    @classmethod
    def build(cls, settings: IngestSettings, kafka: KafkaSettings) -> WebhookPublisher:
        """The publisher from the environment's settings, with a producer that does not linger:
        a batch waits for the previous one of its partition anyway, and lingering as well would
        add the linger to every batch in a queue (p50 at 200 webhooks/s: 22 ms, not 5)."""
        return cls(
            EventProducer(create_producer(kafka, linger_ms=0), kafka),
            Spool(settings.spool_dir, settings.spool_max_bytes, written_at=_produced_at),
            settings.publish_timeout_s,
        )

    def __init__(self, producer: EventProducer, spool: Spool, timeout_s: float) -> None:
        self.producer, self.spool, self.timeout_s = producer, spool, timeout_s
        self.connected = False
        self._wake = asyncio.Event()  # the drainer's
        self._ship_wake = asyncio.Event()
        self._write_wake = asyncio.Event()
        self._open: _Batch | None = None
        self._unsettled: deque[_Batch] = deque()  # Kafka-bound batches, oldest first
        self._to_spool: deque[_Batch] = deque()  # waiting for the writer, in order
        self._writing = False
        self._held: _Batch | None = None  # records behind the spool's tail while it drains
        self._held_since = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start the producer in the background (ingest must serve while Kafka is down), the
        shipper, the spool writer and the drainer."""
        SPOOL_DEPTH.set(self.spool.pending_bytes())
        SPOOL_AGE.set_function(self.spool.oldest_age_s)  # computed at each scrape
        self._tasks = [
            asyncio.create_task(self._connect()),
            asyncio.create_task(self._ship()),
            asyncio.create_task(self._write()),
            asyncio.create_task(self._drain()),
        ]

    async def stop(self) -> None:
        """Stop; records still waiting for Kafka are spooled first, so they stay durable."""
        if self._held is not None:
            self._spool_held(self._held)
        if self._unsettled:
            self._fall_back(self._unsettled[0], "stopping")
        for _ in range(100):
            if not (self._to_spool or self._writing):
                break
            await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.connected:
            try:  # an idempotent producer flushes forever while the broker is away; what it
                # still holds was spooled above
                await asyncio.wait_for(self.producer.stop(), timeout=10.0)
            except TimeoutError:
                log.warning("kafka producer did not stop in 10 s; its records are in the spool")

    async def publish(self, key: bytes, value: bytes) -> Landed:
        if len(key) + len(value) > MAX_RECORD_BYTES:
            raise TooLarge(f"the event is {len(value)} bytes, over {MAX_RECORD_BYTES}")
        began = time.perf_counter()
        batch: _Batch | None
        if self._held is not None:  # behind the spool's tail, which is reaching Kafka now
            batch = self._held
        elif self.connected and not (self._to_spool or self._writing) and self.spool.is_empty():
            batch = self._open
            if batch is None:
                batch = self._open = _Batch()
                batch.timer = asyncio.get_running_loop().call_later(
                    self.timeout_s, self._fall_back, batch, "timeout"
                )
                self._unsettled.append(batch)
                self._ship_wake.set()
        else:  # behind a backlog, order beats speed: join the spool's queue
            if not self._to_spool or not self._to_spool[-1].direct:
                self._to_spool.append(_Batch(spooling=True, direct=True))
                self._write_wake.set()
            batch = self._to_spool[-1]
        path = await batch.add(key, value)
        (KAFKA_SECONDS if path == "kafka" else SPOOL_SECONDS).observe(time.perf_counter() - began)
        return path

    async def _ship(self) -> None:
        while True:
            await self._ship_wake.wait()
            self._ship_wake.clear()
            batch, self._open = self._open, None
            if batch is None or batch.spooling or batch.settled:
                continue
            try:
                acks = await self.producer.enqueue_raw(TOPIC, batch.records, HEADERS)
            except Exception as exc:  # the shipper must outlive any one batch
                self._fall_back(batch, type(exc).__name__)
                continue
            asyncio.gather(*acks).add_done_callback(functools.partial(self._acked, batch))

    def _acked(self, batch: _Batch, acks: asyncio.Future[list[Any]]) -> None:
        if acks.cancelled() or acks.exception() is not None:
            error = "cancelled" if acks.cancelled() else type(acks.exception()).__name__
            self._fall_back(batch, error)
        else:
            self._settle(batch, "kafka")

    def _settle(self, batch: _Batch, outcome: Landed | Exception) -> bool:
        if batch.settled:
            return False
        batch.settled = True
        if batch.timer is not None:
            batch.timer.cancel()
        for waiter in batch.waiters:
            if waiter.done():  # its request was cancelled; the record is stored all the same
                continue
            if isinstance(outcome, Exception):  # one instance each: tracebacks stay apart
                waiter.set_exception(type(outcome)(*outcome.args))
            else:
                waiter.set_result(outcome)
        while self._unsettled and (self._unsettled[0].settled or self._unsettled[0].spooling):
            self._unsettled.popleft()
        return True

    def _fall_back(self, batch: _Batch, error: str) -> None:
        """Kafka did not take ``batch`` in time: spool every unsettled batch, oldest first
        through the open one, so that order survives (some may still reach Kafka as well: a
        duplicate is harmless downstream, a loss is not)."""
        if batch.settled or batch.spooling:
            return
        log.warning("publish to kafka failed, spooling", extra={"error": error})
        self._open = None
        while self._unsettled:
            b = self._unsettled.popleft()
            if b.settled or b.spooling:
                continue
            b.spooling = True
            if b.timer is not None:
                b.timer.cancel()
            self._to_spool.append(b)
        self._write_wake.set()

    async def _write(self) -> None:
        """The one spool writer: every queued batch in order, one fsync per round."""
        while True:
            await self._write_wake.wait()
            self._write_wake.clear()
            while self._to_spool:
                self._writing = True
                batches = list(self._to_spool)
                self._to_spool.clear()
                outcome: Landed | Exception = "spool"
                try:
                    await self.spool.append_many([r for b in batches for r in b.records])
                except Exception as exc:  # SpoolError, or anything else: never leave a waiter
                    outcome = Unavailable(str(exc))
                for b in batches:
                    self._settle(b, outcome)
                self._writing = False
                SPOOL_DEPTH.set(self.spool.pending_bytes())
                self._wake.set()

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
                    self._release_held()
                    break
                try:
                    await self.producer.send_many_raw(
                        TOPIC, [(r.key, r.value) for r in batch], HEADERS
                    )
                except Exception as exc:  # KafkaError mostly; the drainer must never die
                    log.warning("spool drain paused", extra={"error": type(exc).__name__})
                    if self._held is not None:
                        self._spool_held(self._held)
                    await asyncio.sleep(1.0)
                    self._wake.set()
                    break
                await asyncio.to_thread(self.spool.mark_forwarded, batch[-1])
                SPOOL_DEPTH.set(self.spool.pending_bytes())
                if self._held is None:  # Kafka answers again: hold new records, spool no more
                    self._hold()
                self._release_held()

    def _hold(self) -> None:
        """New records wait in memory behind the tail the drainer is forwarding."""
        held = self._held = _Batch()
        self._held_since = asyncio.get_running_loop().time()
        held.timer = asyncio.get_running_loop().call_later(self.timeout_s, self._spool_held, held)

    def _spool_held(self, held: _Batch) -> None:
        """The hold outlasted the timeout (or the drain failed): spool it after the tail."""
        if held is not self._held:
            return
        self._held = None
        if held.timer is not None:
            held.timer.cancel()
        if held.records:
            held.spooling = held.direct = True
            self._to_spool.append(held)
            self._write_wake.set()

    def _release_held(self) -> None:
        """Once the spool is empty and nothing waits for the writer (everything spooled is in
        Kafka), the held records go the Kafka way, within what is left of their timeout."""
        if self._held is None or not self.spool.is_empty() or self._to_spool or self._writing:
            return
        held, self._held = self._held, None
        if held.timer is not None:
            held.timer.cancel()
        if not held.records:
            return
        left = self._held_since + self.timeout_s - asyncio.get_running_loop().time()
        held.timer = asyncio.get_running_loop().call_later(
            max(left, 0.01), self._fall_back, held, "timeout"
        )
        self._unsettled.append(held)
        self._open = held
        self._ship_wake.set()

    async def connected_within(self, timeout_s: float) -> bool:
        """Wait until the producer, which connects in the background, is up (tests)."""
        deadline = time.monotonic() + timeout_s
        while not self.connected:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def drained(self, timeout_s: float) -> bool:
        """Wait until the spool is empty (tests and graceful shutdown)."""
        deadline = time.monotonic() + timeout_s
        while not self.spool.is_empty():
            if time.monotonic() > deadline:
                return False
            self._wake.set()
            await asyncio.sleep(0.05)
        return True
