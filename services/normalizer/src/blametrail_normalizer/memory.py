"""An in-memory :class:`~blametrail_normalizer.lookup.Lookup`: the tables the app keeps, as dicts.

The faust app feeds it from the compacted control-plane topics; tests fill it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from blametrail_common.events import ConnectionStateV1, MappingStateV1, ServiceStateV1, mapping_key

from blametrail_normalizer.lookup import follow_aliases

__all__ = ["MemoryLookup"]


@dataclass
class MemoryLookup:
    connections: dict[str, ConnectionStateV1] = field(default_factory=dict)
    mappings: dict[str, MappingStateV1] = field(default_factory=dict)  # key: mapping_key(...)
    services: dict[str, ServiceStateV1] = field(default_factory=dict)
    projects: dict[tuple[str, str], str] = field(
        default_factory=dict
    )  # (connection, project id) -> slug
    incidents: set[str] = field(default_factory=set)
    aliases: dict[tuple[str, str], str] = field(default_factory=dict)  # merged -> primary

    def connection(self, connection_id: str) -> ConnectionStateV1 | None:
        return self.connections.get(connection_id)

    def connection_for_installation(self, installation_uuid: str) -> ConnectionStateV1 | None:
        return next(
            (c for c in self.connections.values() if c.installation_uuid == installation_uuid), None
        )

    def mapping(self, connection_id: str, project_slug: str) -> MappingStateV1 | None:
        return self.mappings.get(mapping_key(connection_id, project_slug))

    def project_slug(self, connection_id: str, project_id: str) -> str | None:
        learned = self.projects.get((connection_id, project_id))
        if learned:
            return learned
        return next(
            (
                m.sentry_project_slug
                for m in self.mappings.values()
                if m.connection_id == connection_id and m.sentry_project_id == project_id
            ),
            None,
        )

    def service(self, service_id: str) -> ServiceStateV1 | None:
        return self.services.get(service_id)

    def incident_known(self, incident_id: str) -> bool:
        return incident_id in self.incidents

    def primary_issue(self, connection_id: str, issue_id: str) -> str | None:
        return follow_aliases(lambda i: self.aliases.get((connection_id, i)), issue_id)
