"""Consumers: manual commits after the effect, batch at a time, graceful stop.

The contract of :func:`run_batches`: a batch's offsets are committed only after its handler
returned; if the handler raises, nothing of that batch is committed and the error propagates
(:func:`consume` then starts over with a new consumer after a backoff, see
:mod:`blametrail_common.resilience`; the batch is read again). A commit refused because the group
rebalanced meanwhile (a broker outage, a member joining) is not an error: the partitions' new owner,
maybe this consumer again, gets the batch again. Effects must therefore be idempotent.

Every poll also updates ``blametrail_consumer_lag`` of the assigned partitions, and an idle loop
asks the cluster for metadata every few seconds, so readiness says ``kafka: false`` while the
broker is away even when no records flow.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from blametrail_common.metrics import CONSUMER_LAG
from blametrail_common.resilience import DEPENDENCIES, KAFKA, Dependencies, supervise
from blametrail_common.settings import KafkaSettings
from blametrail_common.topics import topic_name

__all__ = [
    "BatchHandler",
    "KafkaWatch",
    "consume",
    "create_consumer",
    "install_stop_signals",
    "poll_batch",
    "run_batches",
    "stop_quietly",
]

log = logging.getLogger(__name__)

BatchHandler = Callable[[Sequence[ConsumerRecord[bytes, bytes]]], Awaitable[None]]


def create_consumer(
    settings: KafkaSettings, topics: Sequence[str], group_id: str | None, **overrides: Any
) -> AIOKafkaConsumer:
    """Build (not start) a consumer of registry topics with auto-commit off.

    ``group_id=None`` makes a group-less reader (e.g. for compacted tables read from the start).
    A group member's partitions wait at most ``BLAMETRAIL_KAFKA_SESSION_TIMEOUT_MS`` for it after
    it died (heartbeats every third of that). Each fetch gathers ``BLAMETRAIL_KAFKA_FETCH_MIN_BYTES``
    at the broker, waiting ``_FETCH_MAX_WAIT_MS`` at most (many records a request, not one).
    """
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_poll_records": 1000,
        "fetch_min_bytes": settings.fetch_min_bytes,
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": max(100, settings.session_timeout_ms // 3),
    }
    options.update(overrides)
    return AIOKafkaConsumer(*(topic_name(t, settings.topic_prefix) for t in topics), **options)


def install_stop_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGTERM/SIGINT so the loop finishes its batch, commits and exits."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


Polled = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


async def poll_batch(
    consumer: AIOKafkaConsumer,
    *,
    timeout_ms: int = 500,
    max_records: int | None = None,
    gather_ms: int = 0,
) -> Polled:
    """One batch: what a poll of up to ``timeout_ms`` gives, then, if that was some records but
    fewer than ``max_records``, what else arrives within ``gather_ms`` (polled until then: the
    fetcher holds one fetched answer per partition). Each partition's records stay in log order,
    each once: a partition that rebalancing handed back during the gather is fetched again from
    its committed offset, and what the batch already holds of it is not taken twice."""
    polled: Polled = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
    count = sum(map(len, polled.values()))
    if not count or gather_ms <= 0:
        return polled
    clock = asyncio.get_running_loop().time
    deadline = clock() + gather_ms / 1000
    while (max_records is None or count < max_records) and (left := deadline - clock()) > 0:
        room = None if max_records is None else max_records - count
        more = await consumer.getmany(timeout_ms=max(1, int(left * 1000)), max_records=room)
        for tp, records in more.items():
            held = polled.get(tp)
            if held:
                last = held[-1].offset
                records = [r for r in records if r.offset > last]
            polled[tp] = [*(held or ()), *records]
            count += len(records)
    return polled


async def run_batches(
    consumer: AIOKafkaConsumer,
    handle: BatchHandler,
    stop: asyncio.Event,
    *,
    timeout_ms: int = 500,
    max_records: int | None = None,
    gather_ms: int = 0,
) -> None:
    """Poll (:func:`poll_batch`), hand each batch to ``handle``, then commit ``offset + 1`` per
    partition.

    Returns when ``stop`` is set (after committing the batch in hand). See module docstring.
    """
    watch = KafkaWatch(consumer)
    while not stop.is_set():
        polled = await poll_batch(
            consumer, timeout_ms=timeout_ms, max_records=max_records, gather_ms=gather_ms
        )
        records = [r for batch in polled.values() for r in batch]
        await watch.polled(bool(records))
        if not records:
            continue
        await handle(records)
        await commit_or_redeliver(consumer, _next_offsets(polled))


async def commit_or_redeliver(
    consumer: AIOKafkaConsumer,
    offsets: dict[TopicPartition, OffsetAndMetadata],
    dependencies: Dependencies = DEPENDENCIES,
) -> bool:
    """Commit ``offsets``; False when the group rebalanced while the batch was in hand (partitions
    revoked meanwhile, or the commit refused for an old generation): the batch is then
    redelivered to the partitions' owner, at-least-once. Other errors propagate."""
    assigned = consumer.assignment()
    kept = {tp: o for tp, o in offsets.items() if tp in assigned}
    try:
        if kept:
            await consumer.commit(kept)
    except (CommitFailedError, IllegalStateError) as exc:
        log.warning(
            "commit refused after a rebalance; the batch will be redelivered",
            extra={"error": type(exc).__name__, "partitions": len(offsets)},
        )
        return False
    dependencies.up(KAFKA)
    if len(kept) < len(offsets):
        log.warning(
            "commit refused after a rebalance; the batch will be redelivered",
            extra={"error": "revoked", "partitions": len(offsets) - len(kept)},
        )
        return False
    return True


async def consume(
    settings: KafkaSettings,
    topics: Sequence[str],
    group_id: str,
    handle: BatchHandler,
    stop: asyncio.Event,
    *,
    name: str | None = None,
) -> None:
    """A group consumer of ``topics`` through :func:`run_batches` until ``stop``; then it leaves.

    Any error (the broker away, the handler failing) ends that consumer; a new one starts after a
    backoff (:func:`~blametrail_common.resilience.supervise`, loop ``name``, default the group),
    from the committed offsets. It never gives up while ``stop`` is unset.
    """

    async def once(stop: asyncio.Event) -> None:
        consumer = create_consumer(settings, topics, group_id)
        try:
            await consumer.start()
            await run_batches(consumer, handle, stop, gather_ms=settings.batch_gather_ms)
        finally:
            await stop_quietly(consumer)

    await supervise(name or group_id, once, stop)


class KafkaWatch:
    """What a poll loop tells the operator: lag per assigned partition after every poll, and
    whether the cluster answers (:data:`~blametrail_common.resilience.DEPENDENCIES`).

    A consumer keeps polling through a broker outage (aiokafka reconnects by itself, polls come
    back empty), so an idle loop asks for cluster metadata every ``probe_s`` to notice one.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        dependencies: Dependencies = DEPENDENCIES,
        probe_s: float = 5.0,
    ) -> None:
        self.consumer, self.dependencies, self.probe_s = consumer, dependencies, probe_s
        self.group = str(getattr(consumer, "_group_id", None) or "")  # aiokafka keeps it private
        self._clock = asyncio.get_running_loop().time
        self._probed = self._clock()
        dependencies.up(KAFKA)  # the consumer started: the cluster answered

    async def polled(self, got_records: bool) -> None:
        await self._lag()
        now = self._clock()
        if got_records:
            self._probed = now
        elif now - self._probed >= self.probe_s:
            self._probed = now
            self.dependencies.set(KAFKA, await self._probe())

    async def _probe(self) -> bool:
        try:
            await asyncio.wait_for(self.consumer.topics(), self.probe_s)
        except (KafkaError, TimeoutError):
            return False
        return True

    async def _lag(self) -> None:
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                continue  # nothing fetched from it yet
            try:
                position = await self.consumer.position(tp)
            except IllegalStateError:  # revoked meanwhile
                continue
            CONSUMER_LAG.labels(self.group, tp.topic, str(tp.partition)).set(
                max(0, high - position)
            )


def _next_offsets(
    polled: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
) -> dict[TopicPartition, OffsetAndMetadata]:
    return {
        tp: OffsetAndMetadata(batch[-1].offset + 1, "") for tp, batch in polled.items() if batch
    }


async def stop_quietly(consumer: AIOKafkaConsumer) -> None:
    """Stop ``consumer`` even when the broker is away: closing its fetcher while a fetch to a
    node that is gone backs off, aiokafka lets that fetch task's ``CancelledError`` (or the
    ``NodeNotReadyError`` behind it) out of ``stop()``, which would turn a shutdown or a restart
    during an outage into an error of its own. A cancellation of the caller itself still
    propagates."""
    try:
        await consumer.stop()
    except (KafkaError, asyncio.CancelledError) as exc:
        task = asyncio.current_task()
        if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
            raise
        log.info("consumer stopped with the broker away", extra={"error": type(exc).__name__})
