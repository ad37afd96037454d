"""A :class:`~blametrail_normalizer.lookup.Lookup` over the app's tables.

Control-plane state (``cp-connections``, ``cp-mappings``, ``cp-services``) is read with
:class:`blametrail_common.kafka.table.CompactedTable`: every worker reads every row, as a faust
GlobalTable would. (A faust GlobalTable whose changelog is one of these externally written
topics hung faust-streaming 0.15.3's partition assignment here, so faust keeps only the state it
owns: learnt project ids and known incidents, in tables with their own changelogs.)
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping

from blametrail_common.events import ConnectionStateV1, MappingStateV1, ServiceStateV1, mapping_key
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.settings import KafkaSettings

__all__ = ["ControlPlaneTables", "TableLookup"]


class ControlPlaneTables:
    def __init__(self, kafka: KafkaSettings) -> None:
        self.connections = CompactedTable(kafka, "cp-connections", ConnectionStateV1)
        self.mappings = CompactedTable(kafka, "cp-mappings", MappingStateV1)
        self.services = CompactedTable(kafka, "cp-services", ServiceStateV1)
        self.ready = asyncio.Event()

    async def start(self) -> None:
        await asyncio.gather(self.connections.start(), self.mappings.start(), self.services.start())
        self.ready.set()

    async def stop(self) -> None:
        await asyncio.gather(self.connections.stop(), self.mappings.stop(), self.services.stop())


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
