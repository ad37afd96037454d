"""Consumers: manual commits after the effect, batch at a time, graceful stop.

The contract of :func:`run_batches`: a batch's offsets are committed only after its handler
returned; if the handler raises, nothing of that batch is committed and the error propagates (the
process exits, its replacement gets the batch again). Effects must therefore be idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from blametrail_common.settings import KafkaSettings
from blametrail_common.topics import topic_name

__all__ = ["BatchHandler", "consume", "create_consumer", "install_stop_signals", "run_batches"]

log = logging.getLogger(__name__)

BatchHandler = Callable[[Sequence[ConsumerRecord[bytes, bytes]]], Awaitable[None]]


def create_consumer(
    settings: KafkaSettings, topics: Sequence[str], group_id: str | None, **overrides: Any
) -> AIOKafkaConsumer:
    """Build (not start) a consumer of registry topics with auto-commit off.

    ``group_id=None`` makes a group-less reader (e.g. for compacted tables read from the start).
    """
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_poll_records": 1000,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*(topic_name(t, settings.topic_prefix) for t in topics), **options)


def install_stop_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGTERM/SIGINT so the loop finishes its batch, commits and exits."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def run_batches(
    consumer: AIOKafkaConsumer,
    handle: BatchHandler,
    stop: asyncio.Event,
    *,
    timeout_ms: int = 500,
    max_records: int | None = None,
) -> None:
    """Poll, hand each batch to ``handle``, then commit ``offset + 1`` per partition.

    Returns when ``stop`` is set (after committing the batch in hand). See module docstring.
    """
    while not stop.is_set():
        polled = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        records = [r for batch in polled.values() for r in batch]
        if not records:
            continue
        await handle(records)
        await consumer.commit(_next_offsets(polled))


async def consume(
    settings: KafkaSettings,
    topics: Sequence[str],
    group_id: str,
    handle: BatchHandler,
    stop: asyncio.Event,
) -> None:
    """A group consumer of ``topics`` through :func:`run_batches` until ``stop``; then it leaves."""
    consumer = create_consumer(settings, topics, group_id)
    await consumer.start()
    try:
        await run_batches(consumer, handle, stop)
    finally:
        await consumer.stop()


def _next_offsets(
    polled: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
) -> dict[TopicPartition, OffsetAndMetadata]:
    return {
        tp: OffsetAndMetadata(batch[-1].offset + 1, "") for tp, batch in polled.items() if batch
    }
