"""A :class:`~blametrail_normalizer.lookup.Lookup` over the app's tables.

Control-plane state (``cp-connections``, ``cp-mappings``, ``cp-services``) is read with
:class:`blametrail_common.kafka.table.CompactedTable`: every worker reads every row, as a faust
GlobalTable would. Two faust-table designs failed here with faust-streaming 0.15.3 + aiokafka
0.14 + Kafka 3.9.1: a GlobalTable whose changelog is one of these externally written topics hung
the partition assignment; and tables with faust-owned changelogs hung in recovery on restart
once the changelogs held data. So the normalizer's own facts live in process memory, where
losing them is harmless by construction:

- learnt project id -> slug pairs come back with the next issue webhook of that project (or are
  known from the start when the mapping records ``sentry_project_id``);
- "incident already opened" only chooses between ``incident.opened`` and ``incident.updated``
  for alerts; the projection treats a repeated ``opened`` as an update.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from typing import Generic, TypeVar

from blametrail_common.events import ConnectionStateV1, MappingStateV1, ServiceStateV1, mapping_key
from blametrail_common.events.observations import IssueAliasV1, alias_key
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.settings import KafkaSettings

from blametrail_normalizer.lookup import follow_aliases

__all__ = ["ControlPlaneTables", "LruDict", "TableLookup"]

K = TypeVar("K")
V = TypeVar("V")


class LruDict(MutableMapping[K, V], Generic[K, V]):
    """A dict that forgets its least recently used keys beyond ``maxsize``."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()

    def __getitem__(self, key: K) -> V:
        value = self._data[key]
        self._data.move_to_end(key)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def __delitem__(self, key: K) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class ControlPlaneTables:
    def __init__(self, kafka: KafkaSettings) -> None:
        self.connections = CompactedTable(kafka, "cp-connections", ConnectionStateV1)
        self.mappings = CompactedTable(kafka, "cp-mappings", MappingStateV1)
        self.services = CompactedTable(kafka, "cp-services", ServiceStateV1)
        self.aliases = CompactedTable(kafka, "sentry-issue-aliases", IssueAliasV1)  # merges
        self.ready = asyncio.Event()

    async def start(self) -> None:
        await asyncio.gather(
            self.connections.start(),
            self.mappings.start(),
            self.services.start(),
            self.aliases.start(),
        )
        self.ready.set()

    async def stop(self) -> None:
        await asyncio.gather(
            self.connections.stop(), self.mappings.stop(), self.services.stop(), self.aliases.stop()
        )


class TableLookup:
    def __init__(
        self,
        cp: ControlPlaneTables,
        projects: MutableMapping[str, str],
        incidents: MutableMapping[str, bool],
    ) -> None:
        self.cp, self.projects, self.incidents = cp, projects, incidents

    def connection(self, connection_id: str) -> ConnectionStateV1 | None:
        return self.cp.connections.get(connection_id)

    def connection_for_installation(self, installation_uuid: str) -> ConnectionStateV1 | None:
        return next(
            (c for c in self.cp.connections.values() if c.installation_uuid == installation_uuid),
            None,
        )

    def mapping(self, connection_id: str, project_slug: str) -> MappingStateV1 | None:
        return self.cp.mappings.get(mapping_key(connection_id, project_slug))

    def project_slug(self, connection_id: str, project_id: str) -> str | None:
        learned = self.projects.get(f"{connection_id}:{project_id}")
        if learned:
            return learned
        return next(
            (
                m.sentry_project_slug
                for m in self.cp.mappings.values()
                if m.connection_id == connection_id and m.sentry_project_id == project_id
            ),
            None,
        )

    def service(self, service_id: str) -> ServiceStateV1 | None:
        return self.cp.services.get(service_id)

    def incident_known(self, incident_id: str) -> bool:
        return bool(self.incidents.get(incident_id))

    def primary_issue(self, connection_id: str, issue_id: str) -> str | None:
        def step(merged: str) -> str | None:
            alias = self.cp.aliases.get(alias_key(connection_id, merged))
            return alias.primary_issue_id if alias is not None else None

        return follow_aliases(step, issue_id)
