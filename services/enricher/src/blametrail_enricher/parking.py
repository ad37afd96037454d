"""Parked enrichments: incident events waiting for Sentry to answer again, and how they come back.

Why parking, and why a compacted topic. A Sentry outage lasts minutes; the consumer of
``incident-events`` must not hold a poll batch for that long (past aiokafka's
``max_poll_interval_ms``, 300 s, the group evicts the member), and it may commit a batch only
once every record has a durable outcome. So the stream step tries Sentry in line for a short,
bounded time (the client's ``max_attempts`` and the batch's time budget), and an incident whose
Sentry did not answer gets a durable outcome of its own: it is **parked**, i.e. its event's
bytes are written, acknowledged, to the compacted topic ``incident-events-parked`` (key: the
event id; retry state in ``park-*`` headers), and the batch commits.

Every enricher replica reads that topic whole at start and follows it (like
:class:`~blametrail_common.kafka.table.CompactedTable`), so the parked set is rebuilt after a
crash or a ``kill -9`` and nothing parked is forgotten. Each replica retries the parked events of
the ``incident-events`` partitions it is assigned (the source partition is in the headers), so two
replicas do not retry the same event. A retry rewrites the event under its key (attempts, next
due time), the outcome removes it (a tombstone): enriched, or failed for good. Nothing but the
retries themselves is written, and there are no offsets to commit: a crash between an outcome and
its tombstone retries the event once more, which the deterministic output ids absorb.

When a parked event is retried (:class:`SentryHealth`, per connection, shared with the stream
step):

* A connection whose Sentry left ``down_after`` calls in a row unanswered (5xx, timeouts, dropped
  connections, 429s past the client's wait) is *down*: no call is made for it but one *probe* at
  a time, spaced by a capped, jittered, growing backoff. New incidents of a down connection are
  parked at once, without a call, which keeps batches short during an outage.
* Each parked event is retried when its own backoff is due (:func:`park_delay`: exponential from
  ``base_delay_s``, capped at ``max_delay_s``, equal jitter), subject to the probe rule above.
* The first answer from a down connection's Sentry (a probe's, or any other call's) marks it up
  and releases at once every event of that connection parked before, paced by the redrive
  concurrency and the client's per-organization limits and rate-limit headers.
* Past ``budget_s`` since its first failure an event is recorded ``failed`` once (the projection
  shows it) and stays parked, retried at the capped pace: when Sentry answers again it is
  enriched, and the enrichment replaces the failure. Nothing stays failed only because of an
  outage. Sentry's refusals (404, 403, 401 after a refresh, 400) are answers, not outages: they
  are recorded failed and dead-lettered at once, never retried by themselves.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.structs import TopicPartition
from blametrail_common.kafka import EventProducer, create_consumer
from blametrail_common.kafka.consumer import stop_quietly
from blametrail_common.metrics import DEPENDENCY_UP
from blametrail_common.settings import KafkaSettings
from blametrail_common.topics import topic_name
from prometheus_client import Gauge

__all__ = [
    "PARKED",
    "PARKED_TOPIC",
    "ParkPolicy",
    "Parked",
    "ParkingLot",
    "SentryHealth",
    "park_delay",
]

log = logging.getLogger(__name__)

PARKED_TOPIC = "incident-events-parked"
PARKED = Gauge(
    "blametrail_enrichments_parked",
    "Incident enrichments parked until Sentry answers again (the whole lot: the same on every replica)",
)


@dataclass(frozen=True, slots=True)
class ParkPolicy:
    """How long and how often parked enrichments are retried (see the module docstring)."""

    budget_s: float = 3600.0
    base_delay_s: float = 2.0
    max_delay_s: float = 30.0
    down_after: int = 2


def park_delay(attempt: int, policy: ParkPolicy, rng: Callable[[], float]) -> float:
    """Pure: seconds before retry number ``attempt`` (1-based) of a parked event, or between
    probes of a down connection: exponential, capped, half fixed and half random (a retry never
    comes at once, and parked events spread out rather than retrying in step)."""
    ceiling = min(policy.max_delay_s, policy.base_delay_s * 2.0 ** max(attempt - 1, 0))
    return ceiling / 2 + rng() * ceiling / 2


_PREFIX = "park-"


@dataclass(frozen=True, slots=True)
class Parked:
    """One parked incident event: its bytes and where it stands."""

    key: str
    """The incident event's id (the parked topic's key)."""
    connection_id: str
    incident_id: str
    source_partition: int
    source_offset: int
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    first_failed_at: float
    """Epoch seconds of the first failed or deferred try: the budget runs from here."""
    attempts: int
    """Tries whose Sentry did not answer (a park without a call adds none)."""
    last_attempt_at: float
    due_at: float
    reason: str
    failed_recorded: bool = False
    """A ``failed`` record was written once the budget was spent (so it is written once)."""

    def retried(self, now: float, reason: str, delay: float) -> Parked:
        """Pure: this event after one more unanswered try at ``now``."""
        return replace(
            self,
            attempts=self.attempts + 1,
            last_attempt_at=now,
            due_at=now + delay,
            reason=reason,
        )

    def over_budget(self, now: float, policy: ParkPolicy) -> bool:
        return now - self.first_failed_at >= policy.budget_s

    def record_headers(self) -> list[tuple[str, bytes]]:
        ours = {
            "connection": self.connection_id,
            "incident": self.incident_id,
            "source-partition": str(self.source_partition),
            "source-offset": str(self.source_offset),
            "first-failed-at": repr(self.first_failed_at),
            "attempts": str(self.attempts),
            "last-attempt-at": repr(self.last_attempt_at),
            "due-at": repr(self.due_at),
            "reason": self.reason[:1024],
            "failed-recorded": "1" if self.failed_recorded else "0",
        }
        return [
            *((_PREFIX + k, v.encode("utf-8", "replace")) for k, v in ours.items()),
            *self.headers,
        ]

    @classmethod
    def from_record(
        cls, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> Parked | None:
        """Pure: the parked event a record of the parked topic holds (``None`` if malformed)."""
        ours = {
            k[len(_PREFIX) :]: v.decode("utf-8", "replace")
            for k, v in headers
            if k.startswith(_PREFIX)
        }
        try:
            return cls(
                key=key.decode(),
                connection_id=ours["connection"],
                incident_id=ours["incident"],
                source_partition=int(ours["source-partition"]),
                source_offset=int(ours["source-offset"]),
                value=value,
                headers=tuple((k, v) for k, v in headers if not k.startswith(_PREFIX)),
                first_failed_at=float(ours["first-failed-at"]),
                attempts=int(ours["attempts"]),
                last_attempt_at=float(ours["last-attempt-at"]),
                due_at=float(ours["due-at"]),
                reason=ours.get("reason", ""),
                failed_recorded=ours.get("failed-recorded") == "1",
            )
        except (KeyError, ValueError, UnicodeDecodeError):
            return None


@dataclass
class _Connection:
    unanswered: int = 0
    down_since: float | None = None
    probe_at: float = 0.0
    probing: bool = False
    recovered_at: float = 0.0


class SentryHealth:
    """Per connection: does its Sentry answer? A small state machine over an injected clock.

    Up: every call is admitted. ``down_after`` unanswered calls in a row make it down: then one
    call at a time is admitted (a probe), no sooner than a growing, capped backoff after the last
    failure. Any answer (a success, or a refusal such as a 404) makes it up again and records
    when, which releases what was parked before (:meth:`releases`).
    """

    def __init__(
        self,
        policy: ParkPolicy = ParkPolicy(),
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._policy, self._clock, self._rng = policy, clock, rng
        self._conns: dict[str, _Connection] = {}

    def _get(self, connection_id: str) -> _Connection:
        return self._conns.setdefault(connection_id, _Connection())

    def down(self, connection_id: str) -> bool:
        found = self._conns.get(connection_id)
        return found is not None and found.down_since is not None

    def admit(self, connection_id: str) -> bool:
        """May a call to this connection's Sentry be made now? When down, admitting one makes it
        the probe: report its outcome (:meth:`answered`, :meth:`unanswered` or :meth:`abandon`)."""
        c = self._get(connection_id)
        if c.down_since is None:
            return True
        if c.probing or self._clock() < c.probe_at:
            return False
        c.probing = True
        return True

    def answered(self, connection_id: str) -> None:
        c = self._get(connection_id)
        if c.down_since is not None:
            c.recovered_at = self._clock()
            log.info(
                "sentry answers again",
                extra={
                    "connection_id": connection_id,
                    "down_s": round(c.recovered_at - c.down_since, 1),
                },
            )
        c.unanswered, c.down_since, c.probing = 0, None, False
        self._gauge()

    def unanswered(self, connection_id: str) -> None:
        c, now = self._get(connection_id), self._clock()
        c.unanswered += 1
        c.probing = False
        if c.down_since is None and c.unanswered >= self._policy.down_after:
            c.down_since = now
            log.warning("sentry not answering", extra={"connection_id": connection_id})
        if c.down_since is not None:
            tries = c.unanswered - self._policy.down_after + 1
            c.probe_at = now + park_delay(tries, self._policy, self._rng)
        self._gauge()

    def abandon(self, connection_id: str) -> None:
        """An admitted call ended without an outcome (cancelled): free the probe slot."""
        self._get(connection_id).probing = False

    def releases(self, connection_id: str, since: float) -> bool:
        """Did this connection come back up after ``since`` (so what was parked then may go)?"""
        found = self._conns.get(connection_id)
        return found is not None and found.recovered_at > since

    def _gauge(self) -> None:
        up = all(c.down_since is None for c in self._conns.values())
        DEPENDENCY_UP.labels("sentry").set(1 if up else 0)


class ParkingLot:
    """The parked topic in memory: loaded whole at :meth:`start`, then followed; :meth:`put` and
    :meth:`remove` return once the broker acknowledged and apply the change here at once."""

    def __init__(self, kafka: KafkaSettings, producer: EventProducer) -> None:
        self._kafka, self._producer = kafka, producer
        self._topic = topic_name(PARKED_TOPIC, kafka.topic_prefix)
        self.entries: dict[str, Parked] = {}
        self._ahead: dict[str, int] = {}  # our writes the follower has not read back yet
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def start(self, timeout_s: float = 30.0) -> None:
        """Load the whole topic (returns once caught up with its end at start), then follow it."""
        self.entries.clear()
        self._ahead.clear()
        self.ready.clear()
        self._consumer = create_consumer(self._kafka, [PARKED_TOPIC], None)
        await self._consumer.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not (assigned := self._consumer.assignment()):
            if loop.time() > deadline:
                await self.stop()
                raise RuntimeError(
                    f"topic {self._topic} not found (run `blametrail topics ensure`)"
                )
            await asyncio.sleep(0.05)
        partitions = sorted(assigned)
        await self._consumer.seek_to_beginning(*partitions)
        ends = await self._consumer.end_offsets(partitions)
        self._task = asyncio.create_task(self._follow(ends))
        try:
            await asyncio.wait_for(asyncio.shield(self.ready.wait()), timeout_s)
        except TimeoutError:
            await self.stop()
            raise
        PARKED.set(len(self.entries))
        log.info("parked enrichments loaded", extra={"parked": len(self.entries)})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._consumer is not None:
            await stop_quietly(self._consumer)
            self._consumer = None

    def check(self) -> None:
        """Raise what ended the follower, if it ended (a dead part must not go unnoticed)."""
        if self._task is not None and self._task.done():
            self._task.result()
            raise RuntimeError("the parked topic's follower stopped")

    def connections(self) -> Iterable[str]:
        return {p.connection_id for p in self.entries.values()}

    async def put(self, parked: Parked) -> None:
        meta = await self._producer.send_raw(
            PARKED_TOPIC, parked.key.encode(), parked.value, parked.record_headers()
        )
        self._ahead[parked.key] = meta.offset
        self.entries[parked.key] = parked
        PARKED.set(len(self.entries))

    async def remove(self, key: str) -> None:
        meta = await self._producer.send_raw(PARKED_TOPIC, key.encode(), None)
        self._ahead[key] = meta.offset
        self.entries.pop(key, None)
        PARKED.set(len(self.entries))

    async def _follow(self, ends: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        pending = {tp for tp, end in ends.items() if end > 0}
        if not pending:
            self.ready.set()
        while True:
            polled = await self._consumer.getmany(timeout_ms=500)
            for tp, records in polled.items():
                for record in records:
                    self._apply(record)
                if records and records[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
            if polled:
                PARKED.set(len(self.entries))
            if not pending and not self.ready.is_set():
                self.ready.set()

    def _apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.key is None:
            return
        key = record.key.decode("utf-8", "replace")
        ahead = self._ahead.get(key)
        if ahead is not None:
            if record.offset < ahead:
                return  # older than what we wrote and applied already
            del self._ahead[key]
        if record.value is None:
            self.entries.pop(key, None)
            return
        parked = Parked.from_record(record.key, record.value, record.headers)
        if parked is None:
            log.error("malformed parked record skipped", extra={"key": key})
            return
        self.entries[key] = parked
