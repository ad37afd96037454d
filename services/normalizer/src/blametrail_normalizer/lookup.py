"""What normalization needs to know besides the webhook: the control plane's tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from blametrail_common.events import ConnectionStateV1, MappingStateV1, ServiceStateV1

__all__ = ["MAX_ALIAS_HOPS", "Lookup", "follow_aliases"]

MAX_ALIAS_HOPS = 16


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
        """The issue a merged-away issue id now lives in (``sentry-issue-aliases``), if any:
        followed through every later merge (A into B, then B into C: C), see
        :func:`follow_aliases`."""
        ...


def follow_aliases(
    step: Callable[[str], str | None], issue_id: str, max_hops: int = MAX_ALIAS_HOPS
) -> str | None:
    """Pure: the last issue of the chain of merges from ``issue_id`` (``step``: one alias, the
    issue an id was merged into), None when it was never merged. A cycle (Sentry makes none,
    but the table is data) or a chain longer than ``max_hops`` stops at the last id reached
    before it, so a bad table costs a wrong home, never a hang."""
    visited = {issue_id}
    current = issue_id
    for _ in range(max_hops):
        nxt = step(current)
        if not nxt or nxt in visited:
            break
        visited.add(nxt)
        current = nxt
    return current if current != issue_id else None
