"""What normalization needs to know besides the webhook: the control plane's tables."""

from __future__ import annotations

from typing import Protocol

from blametrail_common.events import ConnectionStateV1, MappingStateV1, ServiceStateV1

__all__ = ["Lookup"]


class Lookup(Protocol):
    """Read-only view of connections, mappings, services, learnt project ids and known incidents."""

    def connection(self, connection_id: str) -> ConnectionStateV1 | None: ...

    def connection_for_installation(self, installation_uuid: str) -> ConnectionStateV1 | None: ...

    def mapping(self, connection_id: str, project_slug: str) -> MappingStateV1 | None: ...

    def project_slug(self, connection_id: str, project_id: str) -> str | None:
        """The slug of a numeric project id (alerts carry only the id), if known."""
        ...

    def service(self, service_id: str) -> ServiceStateV1 | None: ...

    def incident_known(self, incident_id: str) -> bool:
        """Whether an ``incident.opened`` was already emitted for this incident."""
        ...

    def primary_issue(self, connection_id: str, issue_id: str) -> str | None:
        """The issue a merged-away issue id was merged into (``sentry-issue-aliases``), if any."""
        ...
