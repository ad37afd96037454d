"""A compacted topic materialized in memory: key -> latest decoded event (tombstone removes).

:meth:`CompactedTable.start` reads from the beginning and returns once it has caught up with the
end offsets seen at start (so ``ready`` means "as fresh as the log was when we started"); a
background task then keeps following. Readers never touch Postgres and keep working while the
control plane is down. The consumer has no group: every process reads the whole topic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.structs import TopicPartition

from blametrail_common.events import DecodeError, Envelope, EventPayload, decode
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
    ) -> None:
        self._settings, self._topic, self._type = (
            settings,
            topic_name(topic, settings.topic_prefix),
            payload_type,
        )
        self._on_change = on_change
        self._rows: dict[str, Envelope[P]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    def get(self, key: str) -> P | None:
        env = self._rows.get(key)
        return env.payload if env is not None else None

    def values(self) -> Iterator[P]:
        return (env.payload for env in self._rows.values())

    def __len__(self) -> int:
        return len(self._rows)

    async def start(self, timeout_s: float = 30.0) -> None:
        """Load the whole topic, then follow it in the background. Raises on timeout."""
        self._consumer = AIOKafkaConsumer(
            self._topic,
            bootstrap_servers=self._settings.bootstrap_servers,
            client_id=f"{self._settings.client_id}-table",
            group_id=None,  # no group: every partition is ours
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await self._consumer.start()
        partitions = await self._assignment(timeout_s)
        await self._consumer.seek_to_beginning(*partitions)
        ends = await self._consumer.end_offsets(partitions)
        self._task = asyncio.create_task(self._follow(ends))
        try:
            await asyncio.wait_for(self.ready.wait(), timeout_s)
        except TimeoutError:
            await self.stop()
            raise

    async def _assignment(self, timeout_s: float) -> list[TopicPartition]:
        assert self._consumer is not None
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not (assigned := self._consumer.assignment()):
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise RuntimeError(
                    f"topic {self._topic} not found (run `blametrail topics ensure`)"
                )
            await asyncio.sleep(0.05)
        return sorted(assigned)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

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
            if not pending and not self.ready.is_set():
                self.ready.set()

    def _apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.key is None:
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
        self._rows[key] = env
        self._changed(key, env.payload)

    def _changed(self, key: str, payload: P | None) -> None:
        if self._on_change is not None:
            self._on_change(key, payload)
