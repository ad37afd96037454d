"""Dead letters: the original record's bytes, with why it failed in headers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from blametrail_common.kafka.producer import EventProducer
from blametrail_common.metrics import DEAD_LETTERS

__all__ = ["DLQ_HEADERS", "DeadLetterSource", "publish_to_dlq"]


class DeadLetterSource(Protocol):
    """What a dead letter needs of the failed record (an aiokafka or a faust message)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


DLQ_HEADERS = (
    "dlq-reason",
    "dlq-error-type",
    "dlq-source-topic",
    "dlq-source-partition",
    "dlq-source-offset",
)


async def publish_to_dlq(
    producer: EventProducer,
    dlq_topic: str,
    record: DeadLetterSource,
    reason: str,
    error: BaseException | None = None,
) -> None:
    """Send ``record`` unchanged to the registry topic ``dlq_topic``; returns once acknowledged
    (and counted in ``blametrail_dead_letters_total{topic}``, the registry name).

    The reason is truncated to 1 KiB; the original headers are kept after ours.
    """
    headers = [
        ("dlq-reason", reason[:1024].encode("utf-8", "replace")),
        ("dlq-error-type", type(error).__name__.encode() if error else b""),
        ("dlq-source-topic", record.topic.encode()),
        ("dlq-source-partition", str(record.partition).encode()),
        ("dlq-source-offset", str(record.offset).encode()),
    ]
    headers.extend((k, v) for k, v in record.headers or () if k not in DLQ_HEADERS)
    await producer.send_raw(dlq_topic, record.key, record.value, headers)
    DEAD_LETTERS.labels(dlq_topic).inc()
