"""A compacted topic materialized in memory: key -> latest decoded event (tombstone removes).

:meth:`CompactedTable.start` reads from the beginning and returns once it has caught up with the
end offsets seen at start (so ``ready`` means "as fresh as the log was when we started"); a
background task then keeps following. Readers never touch Postgres and keep working while the
control plane is down. The consumer has no group: every process reads the whole topic.

With ``since`` the table reads only the records written at or after ``since()`` (Kafka's record
timestamps, ``offsets_for_times``): a recent window of a delete-policy log that grows forever,
whose start-up must not grow with it. With ``keep=False`` it keeps no rows itself; ``on_change``
sees every record (the caller keeps what it needs, and forgets it).

The follower is supervised (:func:`~blametrail_common.resilience.supervise`): when its consumer
fails it is replaced after a backoff, positioned where the table had got to; the rows read so far
stay served meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.structs import TopicPartition

from blametrail_common.events import DecodeError, Envelope, EventPayload, decode
from blametrail_common.kafka.consumer import stop_quietly
from blametrail_common.resilience import supervise
from blametrail_common.settings import KafkaSettings
from blametrail_common.topics import topic_name

__all__ = ["CompactedTable"]

log = logging.getLogger(__name__)
P = TypeVar("P", bound=EventPayload)


class CompactedTable(Generic[P]):
    """Latest payload per key of one registry topic, for payloads of type ``payload_type``."""

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        payload_type: type[P],
        on_change: Callable[[str, P | None], None] | None = None,
        *,
        since: Callable[[], datetime] | None = None,
        keep: bool = True,
    ) -> None:
        self._settings, self._topic, self._type = (
            settings,
            topic_name(topic, settings.topic_prefix),
            payload_type,
        )
        self._on_change = on_change
        self._since, self._keep = since, keep
        self._since_ms: int | None = None  # records older than this are not applied (``since``)
        self._rows: dict[str, Envelope[P]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._next: dict[TopicPartition, int] = {}  # where the table has got to
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()

    def get(self, key: str) -> P | None:
        env = self._rows.get(key)
        return env.payload if env is not None else None

    def values(self) -> Iterator[P]:
        return (env.payload for env in self._rows.values())

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def running(self) -> bool:
        """Whether it holds a consumer or a following task (between ``start`` and ``stop``)."""
        return self._consumer is not None or self._task is not None

    async def start(self, timeout_s: float = 30.0) -> None:
        """Load the whole topic, then follow it in the background. Raises on timeout."""
        self._stop.clear()
        self._consumer = await self._open(timeout_s)
        try:
            partitions = sorted(self._consumer.assignment())
            await self._seek_start(self._consumer, partitions)
            starts = {tp: await self._consumer.position(tp) for tp in partitions}
            ends = await self._consumer.end_offsets(partitions)
            for tp, at in starts.items():
                self._next.setdefault(tp, at)
            self._task = asyncio.create_task(
                supervise(f"table {self._topic}", self._follow(starts, ends), self._stop)
            )
            await asyncio.wait_for(self.ready.wait(), timeout_s)
        except BaseException:
            await self.stop()
            raise

    async def caught_up(self, timeout_s: float = 5.0) -> None:
        """Return once every record written before this call is applied (the topic's end
        offsets as of now reached); raises :class:`TimeoutError` when the table lags longer."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError(f"table {self._topic} is not started")
        ends = await consumer.end_offsets(sorted(consumer.assignment()))
        deadline = asyncio.get_running_loop().time() + timeout_s
        while any(self._next.get(tp, 0) < end for tp, end in ends.items()):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"table {self._topic} did not catch up in {timeout_s}s")
            await asyncio.sleep(0.005)

    async def _seek_start(
        self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
    ) -> None:
        """Position ``partitions`` at the beginning, or at the first record since ``since()``
        (at the end where there is none)."""
        if self._since is None:
            await consumer.seek_to_beginning(*partitions)
            return
        ms = int(self._since().timestamp() * 1000)
        self._since_ms = ms
        found = await consumer.offsets_for_times(dict.fromkeys(partitions, ms))
        for tp in partitions:
            at = found.get(tp)
            if at is None:
                await consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, at.offset)

    async def _open(self, timeout_s: float) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            self._topic,
            bootstrap_servers=self._settings.bootstrap_servers,
            client_id=f"{self._settings.client_id}-table",
            group_id=None,  # no group: every partition is ours
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            await consumer.start()
            deadline = asyncio.get_running_loop().time() + timeout_s
            while not consumer.assignment():
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(
                        f"topic {self._topic} not found (run `blametrail topics ensure`)"
                    )
                await asyncio.sleep(0.05)
        except BaseException:
            await stop_quietly(consumer)
            raise
        return consumer

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._consumer is not None:
            await stop_quietly(self._consumer)
            self._consumer = None

    def _follow(
        self, starts: dict[TopicPartition, int], ends: dict[TopicPartition, int]
    ) -> Callable[[asyncio.Event], Awaitable[None]]:
        """One attempt of following: (re)open the consumer where the table has got to, then poll
        until stopped; on an error the consumer is dropped and the next attempt opens a new one."""
        pending = {tp for tp, end in ends.items() if end > starts.get(tp, 0)}

        async def follow(stop: asyncio.Event) -> None:
            if self._consumer is None:
                self._consumer = await self._open(30.0)
                fresh = []
                for tp in sorted(self._consumer.assignment()):
                    if tp in self._next:
                        self._consumer.seek(tp, self._next[tp])
                    else:
                        fresh.append(tp)
                if fresh:
                    await self._seek_start(self._consumer, fresh)
            consumer = self._consumer
            try:
                if not pending:
                    self.ready.set()
                while not stop.is_set():
                    polled = await consumer.getmany(timeout_ms=500)
                    for tp, records in polled.items():
                        for record in records:
                            self._apply(record)
                        if records:
                            self._next[tp] = records[-1].offset + 1
                            if records[-1].offset + 1 >= ends.get(tp, 0):
                                pending.discard(tp)
                    if not pending and not self.ready.is_set():
                        self.ready.set()
            except Exception:
                self._consumer = None
                await stop_quietly(consumer)
                raise

        return follow

    def _apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.key is None:
            return
        if self._since_ms is not None and record.timestamp < self._since_ms:
            # positioned past them, but a fetch started before the seek can still hand some over
            return
        key = record.key.decode("utf-8", "replace")
        if record.value is None:
            self._rows.pop(key, None)
            self._changed(key, None)
            return
        try:
            env: Envelope[Any] = decode(record.value)
        except DecodeError as exc:
            log.error(
                "undecodable table record skipped",
                extra={"topic": self._topic, "key": key, "error": str(exc)},
            )
            return
        if not isinstance(env.payload, self._type):
            log.error(
                "unexpected event type in table", extra={"topic": self._topic, "type": env.type}
            )
            return
        if self._keep:
            self._rows[key] = env
        self._changed(key, env.payload)

    def _changed(self, key: str, payload: P | None) -> None:
        if self._on_change is not None:
            self._on_change(key, payload)
