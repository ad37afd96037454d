"""Consumers whose effects live in Postgres: rows and offsets committed in one transaction.

:func:`run_into_postgres` gives exactly-once *effects* on top of at-least-once delivery: each
poll batch is applied and its next offsets are upserted into ``consumer_offsets`` in the same
transaction, and on every partition assignment the stored offsets are read again
(Postgres is the truth: records below the stored offset are skipped, and a consumer positioned
past it is rewound; the offsets also committed to Kafka afterwards, at most every
``mirror_s``, only feed lag tooling: a commit request a batch is load on the broker that a storm
of small batches feels).
A crash anywhere before the commit rolls the batch back; the restart re-reads it.

:func:`project_into_postgres` is the long-running form: it builds the consumer itself and, when
Kafka or Postgres goes away (or ``apply`` fails), starts over from scratch after a backoff (a new
consumer, a new connection, the offsets read from Postgres again); it never gives up while
``stop`` is unset. An idle loop checks its connection every few seconds, so readiness says
``postgres: false`` while the server is away even when no records flow.

With ``ahead``, the loop reads on while a batch's transaction runs: the next batch is polled and
handed to ``ahead`` (work that needs no database, such as decoding, starts then) while Postgres
still works on the one before, so neither waits for the other. At most one transaction is in
flight, and a batch is admitted against the stored offsets only once the one before committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import psycopg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from blametrail_common.kafka.consumer import KafkaWatch, create_consumer, poll_batch, stop_quietly
from blametrail_common.resilience import DEPENDENCIES, POSTGRES, supervise
from blametrail_common.settings import KafkaSettings

__all__ = ["Ahead", "ApplyBatch", "load_offsets", "project_into_postgres", "run_into_postgres"]

log = logging.getLogger(__name__)

ApplyBatch = Callable[
    [psycopg.AsyncConnection, Sequence[ConsumerRecord[bytes, bytes]]], Awaitable[None]
]
# Given each polled batch as soon as it is polled (see :func:`run_into_postgres`).
Ahead = Callable[[Sequence[ConsumerRecord[bytes, bytes]]], None]
Committed = dict[TopicPartition, int]  # a batch's next offsets, once its transaction committed

_UPSERT = (
    "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset, updated_at)"
    " VALUES (%s, %s, %s, %s, now())"
    " ON CONFLICT (group_id, topic, partition)"
    " DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()"
)


async def load_offsets(conn: psycopg.AsyncConnection, group_id: str) -> dict[TopicPartition, int]:
    """The next offsets stored for ``group_id``."""
    cur = await conn.execute(
        "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = %s",
        (group_id,),
    )
    return {TopicPartition(t, p): o for t, p, o in await cur.fetchall()}


class _Forget(ConsumerRebalanceListener):  # type: ignore[misc]
    """Forgets positions of partitions that change hands; they are re-read from Postgres.

    No I/O here: aiokafka may fetch for a new assignment while this callback still runs, so
    positioning happens in the poll loop, against every batch (see :func:`_admit`).
    """

    def __init__(self, known: dict[TopicPartition, int]) -> None:
        self._known = known

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        for tp in revoked:
            self._known.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        for tp in assigned:
            self._known.pop(tp, None)


async def run_into_postgres(
    consumer: AIOKafkaConsumer,
    topics: Sequence[str],
    dsn: str,
    group_id: str,
    apply: ApplyBatch,
    stop: asyncio.Event,
    *,
    timeout_ms: int = 500,
    max_records: int | None = 2000,
    probe_s: float = 5.0,
    gather_ms: int = 0,
    mirror_s: float = 1.0,
    ahead: Ahead | None = None,
) -> None:
    """Subscribe ``consumer`` (started, ``enable_auto_commit=False``) to broker-side ``topics`` and
    apply batches until ``stop`` is set. Exceptions from ``apply`` roll the batch back and
    propagate, and so do Postgres errors (a connection idle for ``probe_s`` is checked).

    ``ahead``: called with each polled batch's records before they are admitted, while the
    batch before may still be in its transaction. ``apply`` later gets the admitted ones (the
    same records, in the same order, unless a partition was rewound); a record ``ahead`` saw may
    never reach ``apply`` (the loop failed first), so what ``ahead`` does must have no effect.
    """
    known: dict[TopicPartition, int] = {}
    consumer.subscribe(list(topics), listener=_Forget(known))
    watch = KafkaWatch(consumer)
    clock = asyncio.get_running_loop().time
    unmirrored: Committed = {}  # next offsets committed to Postgres only
    mirrored = clock()
    pending: asyncio.Task[Committed] | None = None  # the transaction in flight (``ahead``)
    async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=5) as conn:
        DEPENDENCIES.up(POSTGRES)
        checked = clock()

        def committed(offsets: Committed) -> None:
            nonlocal checked
            DEPENDENCIES.up(POSTGRES)
            checked = clock()
            for tp, offset in offsets.items():
                unmirrored[tp] = offset
                # a partition that changed hands meanwhile (``_Forget``) is read from Postgres again
                if tp in known:
                    known[tp] = offset

        try:
            while not stop.is_set():
                if unmirrored and clock() - mirrored >= mirror_s:
                    await _commit_to_kafka(consumer, unmirrored)
                    unmirrored, mirrored = {}, clock()
                polled = await poll_batch(
                    consumer, timeout_ms=timeout_ms, max_records=max_records, gather_ms=gather_ms
                )
                if ahead is not None and polled:
                    ahead([r for recs in polled.values() for r in recs])
                if pending is not None:
                    task, pending = pending, None
                    committed(await task)
                    if stop.is_set():  # what was polled meanwhile is read again after a restart
                        break
                await watch.polled(any(polled.values()))
                if not polled and clock() - checked >= probe_s:
                    await conn.execute("SELECT 1")  # raises while the server is away
                    await conn.commit()
                    checked = clock()
                if any(tp not in known for tp in polled):
                    stored = await load_offsets(conn, group_id)
                    await conn.commit()
                    for tp in polled:
                        known.setdefault(tp, stored.get(tp, 0))
                batches = {}
                for tp, recs in polled.items():
                    admitted = await _admit(consumer, tp, recs, known[tp])
                    if admitted:
                        batches[tp] = admitted
                if not batches:
                    continue
                transaction = _transaction(conn, group_id, apply, batches)
                if ahead is None:
                    committed(await transaction)
                else:
                    pending = asyncio.create_task(transaction)
            if pending is not None:
                task, pending = pending, None
                committed(await task)
        finally:  # also after a failure: what Postgres holds, the lag tooling shows
            if pending is not None:  # the loop failed meanwhile: the batch rolls back
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
            if unmirrored:
                await _commit_to_kafka(consumer, unmirrored)


async def _transaction(
    conn: psycopg.AsyncConnection,
    group_id: str,
    apply: ApplyBatch,
    batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
) -> Committed:
    """Apply ``batches`` and upsert their next offsets, in one transaction."""
    offsets = {tp: recs[-1].offset + 1 for tp, recs in batches.items()}
    async with conn.transaction():
        await apply(conn, [r for recs in batches.values() for r in recs])
        async with conn.cursor() as cur:
            await cur.executemany(
                _UPSERT, [(group_id, tp.topic, tp.partition, o) for tp, o in offsets.items()]
            )
    return offsets


async def project_into_postgres(
    settings: KafkaSettings,
    topics: Sequence[str],
    dsn: str,
    group_id: str,
    apply: ApplyBatch,
    stop: asyncio.Event,
    *,
    name: str | None = None,
    max_records: int | None = 2000,
    ahead: Ahead | None = None,
) -> None:
    """:func:`run_into_postgres` with a consumer of its own (broker-side ``topics``), started over
    from scratch after any error with a backoff, as loop ``name`` (default ``group_id``)."""

    async def once(stop: asyncio.Event) -> None:
        consumer = create_consumer(settings, [], group_id)
        try:
            await consumer.start()
            await run_into_postgres(
                consumer,
                topics,
                dsn,
                group_id,
                apply,
                stop,
                max_records=max_records,
                gather_ms=settings.batch_gather_ms,
                ahead=ahead,
            )
        finally:
            await stop_quietly(consumer)

    await supervise(name or group_id, once, stop)


async def _admit(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    records: list[ConsumerRecord[bytes, bytes]],
    next_offset: int,
) -> list[ConsumerRecord[bytes, bytes]]:
    """The records of ``tp`` not applied yet; on a gap (the consumer ahead of Postgres), seek back."""
    if not records:
        return []
    if records[0].offset > next_offset:
        start = (await consumer.beginning_offsets([tp]))[tp]
        if next_offset >= start:  # records between were never applied: rewind to them
            consumer.seek(tp, next_offset)
            return []
    return [r for r in records if r.offset >= next_offset]


async def _commit_to_kafka(
    consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int], timeout_s: float = 5.0
) -> None:
    """Best effort, bounded: after a failure the broker may be the one away, and aiokafka's
    commit waits for a coordinator as long as none answers; the loop must start over instead."""
    mine = consumer.assignment()  # a partition handed to another member is its to mirror now
    owned = {tp: OffsetAndMetadata(o, "") for tp, o in offsets.items() if tp in mine}
    if not owned:
        return
    try:
        await asyncio.wait_for(consumer.commit(owned), timeout_s)
    except Exception as exc:  # Postgres holds the truth; a failed mirror only delays lag metrics
        log.warning("kafka offset mirror failed", extra={"error": type(exc).__name__})
