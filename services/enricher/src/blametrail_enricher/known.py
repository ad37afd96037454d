"""Which incidents the enricher has already taken care of: a bounded memory, warmed from the log.

An incident is enriched on the first event of it the enricher sees, whatever that event is
(``issue.created`` may never have been received: internal integrations get no retries), and
again when it reopens; later state changes (resolved, assigned, muted...) of a known incident
make no Sentry call. The memory is the ``capacity`` most recently seen incidents (least recently
seen forgotten first); on start it is warmed from the last ``window`` records per partition of
``incident-enrichments`` (keyed by incident id: enriched, failed and linked records all name an
incident taken care of). An incident older than both is enriched once more on its next event:
one extra round of Sentry calls, never a missing enrichment.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable

from aiokafka.structs import TopicPartition
from blametrail_common.kafka import create_consumer
from blametrail_common.settings import KafkaSettings
from blametrail_common.topics import get_topic, topic_name

__all__ = ["KnownIncidents"]


class KnownIncidents:
    """A set of incident ids bounded to ``capacity`` (least recently added dropped first)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, incident_id: object) -> bool:
        return incident_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, incident_id: str) -> None:
        self._ids[incident_id] = None
        self._ids.move_to_end(incident_id)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def discard(self, incident_id: str) -> None:
        self._ids.pop(incident_id, None)

    def update(self, incident_ids: Iterable[str]) -> None:
        for incident_id in incident_ids:
            self.add(incident_id)

    async def warm_up(
        self, kafka: KafkaSettings, window: int = 10_000, timeout_s: float = 60.0
    ) -> int:
        """Add the incidents of the last ``window`` records per partition of
        ``incident-enrichments`` (up to its end now); returns how many records were read.
        Gives up quietly after ``timeout_s`` (a cold memory costs Sentry calls, not enrichments)."""
        name = topic_name("incident-enrichments", kafka.topic_prefix)
        reader = create_consumer(kafka, [], None)
        await reader.start()
        read = 0
        try:
            count = get_topic("incident-enrichments").partitions
            partitions = [TopicPartition(name, p) for p in range(count)]
            reader.assign(partitions)
            begins = await reader.beginning_offsets(partitions)
            ends = await reader.end_offsets(partitions)
            for tp in partitions:
                reader.seek(tp, max(begins[tp], ends[tp] - window))
            deadline = asyncio.get_running_loop().time() + timeout_s
            while todo := [tp for tp in partitions if await reader.position(tp) < ends[tp]]:
                if asyncio.get_running_loop().time() > deadline:
                    break
                polled = await reader.getmany(*todo, timeout_ms=1000)
                for tp, records in polled.items():
                    for record in records:
                        if record.offset < ends[tp] and record.key is not None:
                            read += 1
                            self.add(record.key.decode("utf-8", "replace"))
        finally:
            await reader.stop()
        return read
