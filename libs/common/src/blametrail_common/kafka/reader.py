"""Group-less readers: every partition of some registry topics, assigned by hand at its first offset.

For code that reads a log on its own terms instead of as a group member: replay's projection
rebuild and re-normalization, its offset status, and the benchmarks. Nothing is committed and no
group coordinator is involved; the caller moves positions (``seek``) and decides where to stop.
Group members use :func:`~blametrail_common.kafka.consumer.consume`; compacted tables followed
from the start use :class:`~blametrail_common.kafka.table.CompactedTable`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from blametrail_common.kafka.admin import topic_partitions
from blametrail_common.kafka.consumer import create_consumer
from blametrail_common.settings import KafkaSettings

__all__ = ["Reader", "open_reader"]


@dataclass(frozen=True)
class Reader:
    """A started group-less consumer, assigned :attr:`partitions` (in topic and partition order),
    each positioned at its first offset (:attr:`begins`) when the reader was opened."""

    consumer: AIOKafkaConsumer
    partitions: list[TopicPartition]
    begins: dict[TopicPartition, int]

    async def ends(self) -> dict[TopicPartition, int]:
        """Each partition's end offset now (the offset the next record written will get)."""
        return dict(await self.consumer.end_offsets(self.partitions))


@asynccontextmanager
async def open_reader(
    settings: KafkaSettings, topics: Sequence[str], *, name: str = "reader", **overrides: Any
) -> AsyncIterator[Reader]:
    """A :class:`Reader` of every partition of the registry ``topics`` for the block; the
    consumer is stopped on exit.

    Its client id is ``<client_id>-<name>``; ``overrides`` go to :func:`create_consumer` (e.g.
    ``max_poll_records``, fetch sizes). Raises :class:`LookupError` when a topic does not exist,
    before any consumer is started.
    """
    partitions = await topic_partitions(settings, topics)
    consumer = create_consumer(
        settings, [], group_id=None, client_id=f"{settings.client_id}-{name}", **overrides
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        begins = dict(await consumer.beginning_offsets(partitions))
        # Explicit positions: after seek_to_beginning on manually assigned partitions a reader
        # fetched nothing on a fresh broker (aiokafka 0.14), and waited forever.
        for tp in partitions:
            consumer.seek(tp, begins[tp])
        yield Reader(consumer, partitions, begins)
    finally:
        await consumer.stop()
