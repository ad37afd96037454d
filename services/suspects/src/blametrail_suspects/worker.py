"""The suspects worker: incident, enrichment and deploy events in, ``incident.suspects`` out.

At start every deploy is loaded from the compacted ``deploys`` topic; then one consumer group
reads incidents, enrichments and deploys, :class:`~blametrail_suspects.state.SuspectState`
decides what to score, and a batch's offsets are committed only after its suspects events
were acknowledged. Undecodable records go to the dead-letter topic of their source.

A release named by an enrichment but unknown to the deploy history is imported from what Sentry
reported of its last deploy, onto ``deploys`` (the control plane stores it; see
``blametrail_mappings_api.sentry.deploy_import``).

Run one worker (one member of its group): it must see every deploy and both an incident's events
and its enrichment, which a group with several members would split between them.

The recent incidents are process memory. On start, :meth:`SuspectsWorker.warm_up` reads the last
``window`` incident events and enrichments before the group's committed offsets back into it
(their suspects were published before, so nothing is published again), so an enrichment arriving
just after a restart still finds its incident. Incidents older than that window are re-scored on
their next event, not on a late deploy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.structs import TopicPartition
from blametrail_common.events import DecodeError, Envelope, MappingStateV1, decode, mapping_key
from blametrail_common.events.deploys import DeployRecordedV1, IncidentSuspectsV1
from blametrail_common.events.enrichment import IncidentEnrichedV1
from blametrail_common.events.incidents import IncidentEvent
from blametrail_common.kafka import EventProducer, create_consumer, publish_to_dlq
from blametrail_common.kafka.admin import admin_client, committed_offsets
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.settings import KafkaSettings
from blametrail_common.topics import topic_name
from prometheus_client import Counter

from blametrail_suspects.state import SuspectState

__all__ = ["INPUTS", "SuspectsWorker"]

log = logging.getLogger(__name__)
INPUTS = ("incident-events", "incident-enrichments", "deploys")
_TOPIC = {IncidentSuspectsV1: "incident-suspects", DeployRecordedV1: "deploys"}
EMITTED = Counter("blametrail_suspects_events_total", "incident.suspects events published")


class SuspectsWorker:
    def __init__(self, state: SuspectState, producer: EventProducer) -> None:
        self.state, self.producer = state, producer

    def follow_mappings(self, kafka: KafkaSettings) -> CompactedTable[MappingStateV1]:
        """The project mappings (``cp-mappings``), for the deploys of the service an incident's
        project is mapped to; the caller starts and stops the table."""
        table = CompactedTable(kafka, "cp-mappings", MappingStateV1)

        def mapped(connection_id: str, slug: str) -> str | None:
            found = table.get(mapping_key(connection_id, slug))
            return found.service_id if found is not None else None

        self.state.mapped_service = mapped
        return table

    async def load_deploys(self, kafka: KafkaSettings) -> int:
        """Every deploy recorded so far, from the compacted topic (no scoring for these)."""
        table = CompactedTable(kafka, "deploys", DeployRecordedV1)
        await table.start()
        try:
            await table.ready.wait()
            for p in table.values():
                self.state.remember(p)
            return len(table)
        finally:
            await table.stop()

    async def warm_up(self, kafka: KafkaSettings, group: str, window: int = 10_000) -> int:
        """Feed the state the last ``window`` records per partition of the incident topics before
        ``group``'s committed offsets, publishing nothing; returns how many were read."""
        names = [
            topic_name(t, kafka.topic_prefix) for t in ("incident-events", "incident-enrichments")
        ]
        admin = admin_client(kafka)
        await admin.start()
        try:
            committed = await committed_offsets(admin, group)
        finally:
            await admin.close()
        ends = {
            tp: meta.offset
            for tp, meta in committed.items()
            if tp.topic in names and meta.offset > 0
        }
        if not ends:
            return 0
        reader = create_consumer(kafka, [], None)
        await reader.start()
        try:
            with self.state.restoring():  # each incident scored once, at the end
                return await self._read_back(reader, ends, window)
        finally:
            await reader.stop()

    async def _read_back(
        self, reader: AIOKafkaConsumer, ends: dict[TopicPartition, int], window: int
    ) -> int:
        read = 0
        reader.assign(list(ends))
        begins = await reader.beginning_offsets(list(ends))
        for tp, end in ends.items():
            reader.seek(tp, max(begins[tp], end - window))
        while todo := [tp for tp in ends if await reader.position(tp) < ends[tp]]:
            polled = await reader.getmany(*todo, timeout_ms=1000)
            for tp, records in polled.items():
                for record in records:
                    if record.offset < ends[tp]:
                        read += 1
                        self._feed(record)
        return read

    def _feed(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            p: Any = decode(record.value or b"").payload
        except DecodeError:
            return
        if isinstance(p, IncidentEnrichedV1):
            self.state.on_enrichment(p)
        elif isinstance(p, IncidentEvent):
            self.state.on_incident(p)

    async def handle(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        out: list[tuple[str, Envelope[Any]]] = []
        for record in records:
            try:
                p: Any = decode(record.value or b"").payload
            except DecodeError as exc:
                logical = record.topic.removeprefix(self.producer.prefix)
                await publish_to_dlq(self.producer, f"{logical}-dlq", record, str(exc), exc)
                continue
            if isinstance(p, DeployRecordedV1):
                found = self.state.on_deploy(p)
            elif isinstance(p, IncidentEnrichedV1):
                found = self.state.on_enrichment(p)
            elif isinstance(p, IncidentEvent):
                found = self.state.on_incident(p)
            else:  # enrichment failures and the like: nothing to score
                continue
            out += [(_TOPIC[type(env.payload)], env) for env in found]
        if out:
            await self.producer.send_many(out)
            EMITTED.inc(sum(1 for topic, _ in out if topic == "incident-suspects"))
