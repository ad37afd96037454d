"""The enricher's stream step: incident events in, enrichment records out, DLQ for give-ups.

Contract (with :func:`blametrail_common.kafka.run_batches`): :meth:`Enricher.handle` returns
only once every record of the batch has a durable outcome, i.e. an enrichment record or a
failure record *and* a dead letter acknowledged by the broker, so committing the batch's
offsets afterwards never loses an event. Transient Sentry trouble is retried inside the client
with a bounded budget, so a partition is never blocked forever.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from aiokafka import ConsumerRecord
from blametrail_common.events import DecodeError, Envelope, decode, new_event
from blametrail_common.events.enrichment import IncidentEnrichmentFailedV1, IncidentLinkedV1
from blametrail_common.events.incidents import IncidentOpenedV1, IncidentReopenedV1
from blametrail_common.kafka import EventProducer, publish_to_dlq
from prometheus_client import Counter, Histogram

from blametrail_enricher.client import SentryApi, SentryApiError, SentryCredentials, TokenRejected
from blametrail_enricher.records import IncidentRef, Limits, build_record

__all__ = ["CredentialSource", "Enricher", "ExternalIssues", "target_of"]

log = logging.getLogger(__name__)

ENRICHED = Counter("blametrail_enrichments_total", "Enrichment outcomes", ["outcome"])
LINKED = Counter(
    "blametrail_sentry_links_total", "External-issue links made in Sentry", ["outcome"]
)
FETCH_SECONDS = Histogram("blametrail_enrichment_fetch_seconds", "Sentry fetch time per incident")


class CredentialSource(Protocol):
    """Current Sentry credentials of a connection (the token learnt from ``cp-connections``)."""

    def credentials(self, connection_id: str) -> SentryCredentials | None: ...

    async def request_refresh(self, connection_id: str, rejected: SentryCredentials) -> None:
        """Ask the token's owner for an early refresh of ``rejected`` (OAuth); internal tokens
        never expire, so for them this only logs."""
        ...


class ExternalIssues(Protocol):
    """Sentry's external issues: the BlameTrail link shown on a Sentry issue."""

    async def create_external_issue(
        self, creds: SentryCredentials, installation_uuid: str, body: dict[str, str]
    ) -> dict[str, Any]: ...


def target_of(event: Envelope[Any]) -> IncidentRef | None:
    """Pure: the incident to enrich for this event (opened or reopened, with a Sentry issue),
    or ``None`` (other events, and metric alerts, which have no issue or event to fetch)."""
    p = event.payload
    if not isinstance(p, IncidentOpenedV1 | IncidentReopenedV1) or p.sentry.issue_id is None:
        return None
    return IncidentRef(p.incident_id, p.tenant_id, p.sentry.connection_id, p.sentry.issue_id)


@dataclass
class Enricher:
    api: SentryApi
    creds: CredentialSource
    producer: EventProducer
    limits: Limits = field(default_factory=Limits)
    concurrency: int = 32
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    refresh_wait_s: float = 10.0
    links: ExternalIssues | None = None
    incident_url: str = "http://127.0.0.1:8082/api/v1/incidents/{incident_id}"

    async def handle(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Enrich every record of a batch concurrently (bounded); returns when all are durable."""
        slots = asyncio.Semaphore(self.concurrency)

        async def one(record: ConsumerRecord[bytes, bytes]) -> None:
            async with slots:
                await self._one(record)

        await asyncio.gather(*(one(r) for r in records))

    async def _one(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            event = decode(record.value)
        except DecodeError as exc:
            ENRICHED.labels("undecodable").inc()
            await publish_to_dlq(self.producer, "incident-events-dlq", record, str(exc), exc)
            return
        target = target_of(event)
        if target is None:
            return
        try:
            await self._enrich(target, event)
        except SentryApiError as exc:
            ENRICHED.labels("failed").inc()
            log.warning(
                "enrichment failed", extra={"incident_id": target.incident_id, "reason": str(exc)}
            )
            await self._fail(target, event, record, str(exc))

    async def _enrich(self, target: IncidentRef, event: Envelope[Any]) -> None:
        with FETCH_SECONDS.time():
            latest, tags = await self._fetch(target)
        record = build_record(target, latest, tags, self.clock(), self.limits)
        out = new_event(
            record,
            key=target.incident_id,
            tenant=target.tenant_id,
            event_id=_derived_id(event, "enriched"),
        )
        await self.producer.send("incident-enrichments", out)
        ENRICHED.labels("enriched").inc()
        if isinstance(event.payload, IncidentOpenedV1):
            await self._link(target, event)

    async def _link(self, target: IncidentRef, event: Envelope[Any]) -> None:
        """Show the new incident on its Sentry issue. Best effort: the enrichment is already
        durable, and a failed link is logged and counted, not retried forever."""
        installation = event.payload.sentry.installation_uuid
        creds = self.creds.credentials(target.connection_id)
        if self.links is None or installation is None or creds is None:
            return
        web_url = self.incident_url.format(incident_id=target.incident_id)
        body = {
            "issueId": target.sentry_issue_id,
            "webUrl": web_url,
            "project": "BlameTrail",
            "identifier": target.incident_id[:8],
        }
        try:
            made = await self.links.create_external_issue(creds, installation, body)
        except SentryApiError as exc:
            LINKED.labels("failed").inc()
            log.warning(
                "sentry link failed", extra={"incident_id": target.incident_id, "reason": str(exc)}
            )
            return
        linked = IncidentLinkedV1(
            incident_id=target.incident_id,
            tenant_id=target.tenant_id,
            connection_id=target.connection_id,
            sentry_issue_id=target.sentry_issue_id,
            external_issue_id=str(made.get("id", "")),
            sentry_web_url=event.payload.sentry.web_url,
            incident_url=web_url,
            linked_at=self.clock(),
        )
        await self.producer.send(
            "incident-enrichments",
            new_event(
                linked,
                key=target.incident_id,
                tenant=target.tenant_id,
                event_id=_derived_id(event, "linked"),
            ),
        )
        LINKED.labels("linked").inc()

    async def _fetch(self, target: IncidentRef) -> tuple[dict[str, Any], list[Any]]:
        for attempt in (1, 2):
            creds = self.creds.credentials(target.connection_id)
            if creds is None:
                raise SentryApiError(f"no usable credentials for connection {target.connection_id}")
            try:
                latest, tags = await asyncio.gather(
                    self.api.latest_event(creds, target.sentry_issue_id),
                    self.api.issue_tags(creds, target.sentry_issue_id),
                )
                return latest, tags
            except TokenRejected:
                if attempt == 2:
                    raise
                await self.creds.request_refresh(target.connection_id, creds)
                await self._await_new_token(target.connection_id, creds)
        raise AssertionError("unreachable")

    async def _await_new_token(self, connection_id: str, old: SentryCredentials) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.refresh_wait_s
        while loop.time() < deadline:
            current = self.creds.credentials(connection_id)
            if current is not None and current.token != old.token:
                return
            await asyncio.sleep(0.2)

    async def _fail(
        self,
        target: IncidentRef,
        event: Envelope[Any],
        record: ConsumerRecord[bytes, bytes],
        reason: str,
    ) -> None:
        failed = IncidentEnrichmentFailedV1(
            incident_id=target.incident_id,
            tenant_id=target.tenant_id,
            sentry_issue_id=target.sentry_issue_id,
            reason=reason,
            attempts=1,
            failed_at=self.clock(),
        )
        await publish_to_dlq(self.producer, "incident-events-dlq", record, reason)
        await self.producer.send(
            "incident-enrichments",
            new_event(
                failed,
                key=target.incident_id,
                tenant=target.tenant_id,
                event_id=_derived_id(event, "failed"),
            ),
        )


def _derived_id(event: Envelope[Any], stage: str) -> uuid.UUID:
    """Output ids derive from the input's, so reprocessing overwrites rather than duplicates."""
    return uuid.uuid5(event.id, f"enricher:{stage}")
