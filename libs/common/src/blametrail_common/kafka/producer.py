"""Producers: ``acks=all`` and idempotence always; the codec applied in one place."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import RecordMetadata

from blametrail_common.events import Envelope, encode
from blametrail_common.settings import KafkaSettings
from blametrail_common.topics import topic_name

__all__ = ["EventProducer", "create_producer"]

Headers = Sequence[tuple[str, bytes]]
_PARTITIONER = DefaultPartitioner()


def create_producer(settings: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    """Build (not start) a producer that only reports success once every in-sync replica has the
    record, and whose retries cannot duplicate or reorder records within a partition."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": settings.linger_ms,
        "compression_type": None if settings.compression == "none" else settings.compression,
        "request_timeout_ms": settings.request_timeout_ms,
        "max_batch_size": 256 * 1024,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


class EventProducer:
    """Sends events and raw records to registered topics; every ``send`` waits for the broker ack.

    Topic arguments are registry names (``"incident-events"``); the environment's prefix is
    applied here.
    """

    def __init__(self, producer: AIOKafkaProducer, settings: KafkaSettings) -> None:
        self.producer = producer
        self.prefix = settings.topic_prefix
        self.started = False

    async def start(self) -> None:
        await self.producer.start()
        self.started = True

    async def stop(self) -> None:
        self.started = False
        await self.producer.stop()

    def topic(self, name: str) -> str:
        return topic_name(name, self.prefix)

    async def send(self, topic: str, event: Envelope[Any], headers: Headers = ()) -> RecordMetadata:
        """Publish an event keyed by ``event.key``; returns once acknowledged (raises otherwise)."""
        hdrs = [*_type_headers(event), *headers]
        return await self.send_raw(topic, event.key.encode(), encode(event), hdrs)

    async def send_many(self, events: Sequence[tuple[str, Envelope[Any]]]) -> list[RecordMetadata]:
        """Publish ``(topic, event)`` pairs in one go, in order; returns once all are acknowledged,
        raising the first failure."""
        futures = []
        for topic, event in events:
            futures.append(
                await self.producer.send(
                    self.topic(topic),
                    value=encode(event),
                    key=event.key.encode(),
                    headers=_type_headers(event),
                )
            )
        return list(await asyncio.gather(*futures))

    async def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = ()
    ) -> RecordMetadata:
        """Publish bytes as they are (``value=None`` is a tombstone); returns once acknowledged."""
        return await self.producer.send_and_wait(
            self.topic(topic), value=value, key=key, headers=list(headers)
        )

    async def send_many_raw(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes | None]],
        headers: Headers = (),
    ) -> None:
        """Publish many records in one go (one batch per partition); returns once all are
        acknowledged, raising the first failure. Order within a partition is kept."""
        await asyncio.gather(*await self.enqueue_raw(topic, records, headers))

    async def enqueue_raw(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes | None]],
        headers: Headers = (),
    ) -> list[asyncio.Future[Any]]:
        """Hand records to the producer as one batch per partition, without waiting for the
        broker; each returned future resolves when the broker acknowledged its batch.

        The partition is the default one (murmur2 of the key, as the Java client and
        :meth:`send_raw` choose), and order within a partition is kept, also across calls.
        Per record this costs an append to a batch: no future, no coroutine, no timer, which is
        what makes it the hot path of ingest.
        """
        name, hdrs = self.topic(topic), list(headers)
        partitions = sorted(await self.producer.partitions_for(name))
        by_partition: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
        for key, value in records:
            by_partition.setdefault(_PARTITIONER(key, partitions, partitions), []).append(
                (key, value)
            )
        futures: list[asyncio.Future[Any]] = []
        for partition, batch in by_partition.items():
            builder = self.producer.create_batch()
            for key, value in batch:
                if builder.append(timestamp=None, key=key, value=value, headers=hdrs) is None:
                    # Full: ship it; the record opens the next batch (a first record always fits).
                    futures.append(
                        await self.producer.send_batch(builder, name, partition=partition)
                    )
                    builder = self.producer.create_batch()
                    builder.append(timestamp=None, key=key, value=value, headers=hdrs)
            futures.append(await self.producer.send_batch(builder, name, partition=partition))
        return futures


def _type_headers(event: Envelope[Any]) -> list[tuple[str, bytes]]:
    return [("bt-type", event.type.encode()), ("bt-version", str(event.version).encode())]
