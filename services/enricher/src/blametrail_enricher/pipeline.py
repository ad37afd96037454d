"""The enricher's stream step: incident events in, enrichment records out; parked while Sentry
does not answer, dead-lettered when it refuses.

Contract (with :func:`blametrail_common.kafka.run_batches`): :meth:`Enricher.handle` returns
only once every record of the batch has a durable outcome acknowledged by the broker: an
enrichment record; a failure record *and* a dead letter (Sentry refused: 404, 403, 401, 400);
or a parked copy of the event (Sentry did not answer), so committing the batch's offsets
afterwards never loses an event. Sentry is tried in line for a bounded time only (the client's
``max_attempts``, and ``batch_budget_s`` per poll batch, far below the consumer's
``max_poll_interval_ms``): what does not get an answer by then is parked and retried by
:meth:`Enricher.redrive` with backoff, released as soon as its Sentry answers again
(:mod:`blametrail_enricher.parking` has the design). Without a parking lot (``lot=None``) an
unanswered event is dead-lettered like a refused one.

What to enrich (:func:`target_of`): the first event of a Sentry-issue incident the enricher sees,
whatever it is (its ``issue.created`` may never have been received), and every reopening; other
events of an incident already taken care of make no Sentry call
(:mod:`blametrail_enricher.known`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from aiokafka import ConsumerRecord
from blametrail_common.events import DecodeError, Envelope, decode, new_event
from blametrail_common.events.enrichment import IncidentEnrichmentFailedV1, IncidentLinkedV1
from blametrail_common.events.incidents import IncidentEvent, IncidentOpenedV1, IncidentReopenedV1
from blametrail_common.events.installations import token_fingerprint
from blametrail_common.kafka import EventProducer, publish_to_dlq
from blametrail_common.sentry_api import (
    SentryApi,
    SentryApiError,
    SentryCredentials,
    TokenRejected,
    is_transient,
)
from prometheus_client import Counter, Histogram

from blametrail_enricher.known import KnownIncidents
from blametrail_enricher.links import BrokenLinks, link_cause
from blametrail_enricher.parking import (
    Parked,
    ParkingLot,
    ParkPolicy,
    SentryHealth,
    park_delay,
)
from blametrail_enricher.records import IncidentRef, Limits, build_record

__all__ = [
    "CredentialSource",
    "Enricher",
    "ExternalIssues",
    "NoCredentials",
    "issue_ref",
    "target_of",
]

log = logging.getLogger(__name__)

ENRICHED = Counter("blametrail_enrichments_total", "Enrichment outcomes", ["outcome"])
LINKED = Counter(
    "blametrail_sentry_links_total", "External-issue links made in Sentry", ["outcome"]
)
LINKS_BROKEN = Counter(
    "blametrail_sentry_link_broken_total",
    "Installations whose links Sentry refused for good, once per installation and cause",
    ["cause"],
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


class Unrecordable(SentryApiError):
    """Sentry answered, with an event that makes no record (``build_record`` refused it): the
    enrichment fails for good, recorded with the reason, instead of failing the batch on every
    delivery."""


class NoCredentials(SentryApiError):
    """The connection has no usable token (unknown, disabled, undecryptable): a person's fix."""


def issue_ref(event: Envelope[Any]) -> IncidentRef | None:
    """Pure: the Sentry issue of an incident event, or ``None`` (other events, and metric
    alerts, which have no issue or event to fetch)."""
    p = event.payload
    if not isinstance(p, IncidentEvent) or p.sentry.issue_id is None:
        return None
    return IncidentRef(p.incident_id, p.tenant_id, p.sentry.connection_id, p.sentry.issue_id)


def target_of(event: Envelope[Any], known: Container[str] = frozenset()) -> IncidentRef | None:
    """Pure: the incident to enrich for this event, given the incidents already taken care of:
    any Sentry-issue incident seen for the first time (opened, or resolved, assigned, muted...
    when its creation never arrived), and every opening or reopening; else ``None``."""
    ref = issue_ref(event)
    if ref is None:
        return None
    if isinstance(event.payload, IncidentOpenedV1 | IncidentReopenedV1):
        return ref
    return ref if ref.incident_id not in known else None


@dataclass(frozen=True, slots=True)
class _ParkedSource:
    """A parked event as a dead letter's source: the ``incident-events`` record it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


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
    incident_url: str = "http://127.0.0.1:8080/incidents/{incident_id}"  # the web's page
    lot: ParkingLot | None = None
    park_policy: ParkPolicy = field(default_factory=ParkPolicy)
    batch_budget_s: float = 120.0
    redrive_concurrency: int = 8
    known: KnownIncidents = field(default_factory=KnownIncidents)
    broken_links: BrokenLinks = field(default_factory=BrokenLinks)
    now_s: Callable[[], float] = time.time
    rng: Callable[[], float] = random.random
    health: SentryHealth = field(init=False)
    _link_locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = field(
        init=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        self.health = SentryHealth(self.park_policy, self.now_s, self.rng)

    async def warm_up(self, kafka: Any, window: int = 10_000) -> int:
        """Remember the incidents the log says were taken care of, and those parked now."""
        read = await self.known.warm_up(kafka, window)
        if self.lot is not None:
            self.known.update(p.incident_id for p in self.lot.entries.values())
        return read

    async def handle(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Enrich every record of a batch concurrently (bounded); returns when all are durable.
        Past ``batch_budget_s`` what has not called Sentry yet is parked without a call."""
        slots = asyncio.Semaphore(self.concurrency)
        deadline = asyncio.get_running_loop().time() + self.batch_budget_s

        async def one(record: ConsumerRecord[bytes, bytes]) -> None:
            async with slots:
                await self._one(record, deadline)

        await asyncio.gather(*(one(r) for r in records))

    async def _one(self, record: ConsumerRecord[bytes, bytes], deadline: float) -> None:
        try:
            event = decode(record.value)
        except DecodeError as exc:
            ENRICHED.labels("undecodable").inc()
            await publish_to_dlq(self.producer, "incident-events-dlq", record, str(exc), exc)
            return
        target = target_of(event, self.known)
        ref = issue_ref(event)
        if ref is None:
            return
        fresh = ref.incident_id not in self.known
        self.known.add(ref.incident_id)  # now, so a later event of the batch sees it
        if target is None:
            return
        try:
            await self._outcome(target, event, record, deadline)
        except BaseException:
            if fresh:  # no durable outcome: the redelivered event must be a target again
                self.known.discard(ref.incident_id)
            raise

    async def _outcome(
        self,
        target: IncidentRef,
        event: Envelope[Any],
        record: ConsumerRecord[bytes, bytes],
        deadline: float,
    ) -> None:
        if self.lot is not None:
            if asyncio.get_running_loop().time() > deadline:
                await self._park(target, event, record, "deferred: the batch's time was spent")
                return
            if not self.health.admit(target.connection_id):
                await self._park(target, event, record, "its Sentry is not answering (no call)")
                return
        error = await self._attempt(target, event)
        if error is None:
            ENRICHED.labels("enriched").inc()
        elif self.lot is not None and is_transient(error):
            await self._park(target, event, record, str(error), attempts=1)
        else:
            ENRICHED.labels("failed").inc()
            log.warning(
                "enrichment failed",
                extra={"incident_id": target.incident_id, "reason": str(error)},
            )
            await self._fail(target, event, record, str(error))

    async def _attempt(self, target: IncidentRef, event: Envelope[Any]) -> SentryApiError | None:
        """One try at enriching, its outcome told to :attr:`health`; the error, if Sentry's."""
        answered: bool | None = None
        try:
            await self._enrich(target, event)
            answered = True
            return None
        except NoCredentials as exc:
            return exc  # no call was made: says nothing about Sentry
        except SentryApiError as exc:
            answered = not is_transient(exc)
            return exc
        finally:
            if answered is None:
                self.health.abandon(target.connection_id)
            elif answered:
                self.health.answered(target.connection_id)
            else:
                self.health.unanswered(target.connection_id)

    async def _park(
        self,
        target: IncidentRef,
        event: Envelope[Any],
        record: ConsumerRecord[bytes, bytes],
        reason: str,
        attempts: int = 0,
    ) -> None:
        assert self.lot is not None
        now = self.now_s()
        parked = Parked(
            key=str(event.id),
            connection_id=target.connection_id,
            incident_id=target.incident_id,
            source_partition=record.partition,
            source_offset=record.offset,
            value=record.value or b"",
            headers=tuple(record.headers or ()),
            first_failed_at=now,
            attempts=attempts,
            last_attempt_at=now,
            due_at=now + park_delay(max(attempts, 1), self.park_policy, self.rng),
            reason=reason,
        )
        await self.lot.put(parked)
        ENRICHED.labels("parked").inc()
        log.info("enrichment parked", extra={"incident_id": target.incident_id, "reason": reason})

    async def redrive(
        self,
        stop: asyncio.Event,
        owned: Callable[[], Container[int]] | None = None,
        tick_s: float = 0.2,
    ) -> None:
        """Retry parked events until ``stop``: those of the ``incident-events`` partitions
        ``owned()`` names (``None``: all), when due or released by their Sentry answering again,
        ``redrive_concurrency`` at a time, one probe at a time for a connection that is down.
        Raises what a retry raised other than Sentry's errors (Kafka gone: the loop restarts)."""
        lot = self.lot
        assert lot is not None
        running: dict[str, asyncio.Task[None]] = {}
        try:
            while not stop.is_set():
                lot.check()
                for key in [k for k, t in running.items() if t.done()]:
                    running.pop(key).result()
                now, mine = self.now_s(), owned() if owned is not None else None
                ready = sorted(
                    (
                        p
                        for p in lot.entries.values()
                        if p.key not in running
                        and (mine is None or p.source_partition in mine)
                        and (
                            p.due_at <= now
                            or self.health.releases(p.connection_id, p.last_attempt_at)
                        )
                    ),
                    key=lambda p: p.due_at,
                )
                for p in ready:
                    if len(running) >= self.redrive_concurrency:
                        break
                    if self.health.admit(p.connection_id):
                        running[p.key] = asyncio.create_task(self._retry(p))
                    elif p.over_budget(now, self.park_policy) and not p.failed_recorded:
                        running[p.key] = asyncio.create_task(self._overdue(p))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), tick_s)
        finally:
            for task in running.values():
                task.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)

    async def _retry(self, parked: Parked) -> None:
        lot = self.lot
        assert lot is not None
        try:
            event: Envelope[Any] = decode(parked.value)
        except DecodeError:  # it decoded when it was parked; a foreign record
            log.error("undecodable parked event dropped", extra={"key": parked.key})
            await lot.remove(parked.key)
            return
        target = issue_ref(event)
        if target is None:
            await lot.remove(parked.key)
            return
        error = await self._attempt(target, event)
        if error is None:
            ENRICHED.labels("redriven").inc()
            log.info(
                "parked enrichment redriven",
                extra={"incident_id": target.incident_id, "attempts": parked.attempts},
            )
            await lot.remove(parked.key)
        elif is_transient(error):
            now = self.now_s()
            again = parked.retried(
                now, str(error), park_delay(parked.attempts + 1, self.park_policy, self.rng)
            )
            if again.over_budget(now, self.park_policy) and not again.failed_recorded:
                await self._past_budget(target, event, again, now)
                again = replace(again, failed_recorded=True)
            await lot.put(again)
        else:
            ENRICHED.labels("failed").inc()
            log.warning(
                "parked enrichment failed",
                extra={"incident_id": target.incident_id, "reason": str(error)},
            )
            source = _ParkedSource(
                self.producer.topic("incident-events"),
                parked.source_partition,
                parked.source_offset,
                event.key.encode(),
                parked.value,
                parked.headers,
            )
            await self._fail(target, event, source, str(error), parked.attempts + 1)
            await lot.remove(parked.key)

    async def _overdue(self, parked: Parked) -> None:
        """Past its budget while its Sentry is down (no call made): recorded failed, once, and
        kept parked."""
        lot = self.lot
        assert lot is not None
        try:
            event: Envelope[Any] = decode(parked.value)
        except DecodeError:
            return  # _retry drops it when its turn comes
        target = issue_ref(event)
        if target is None:
            return
        await self._past_budget(target, event, parked, self.now_s())
        await lot.put(replace(parked, failed_recorded=True))

    async def _past_budget(
        self, target: IncidentRef, event: Envelope[Any], parked: Parked, now: float
    ) -> None:
        ENRICHED.labels("failed").inc()
        reason = (
            f"Sentry did not answer for {now - parked.first_failed_at:.0f}s ({parked.attempts}"
            f" tries; still parked, enriched when it answers again): {parked.reason}"
        )
        log.warning(
            "enrichment over its retry budget",
            extra={"incident_id": target.incident_id, "reason": reason},
        )
        await self._record_failure(target, event, reason, parked.attempts)

    async def _enrich(self, target: IncidentRef, event: Envelope[Any]) -> None:
        with FETCH_SECONDS.time():
            latest, tags = await self._fetch(target)
        try:
            record = build_record(target, latest, tags, self.clock(), self.limits)
        except ValueError as exc:  # an answer no record can hold: the same on every try
            raise Unrecordable(f"Sentry's latest event cannot be recorded: {exc}"[:500]) from exc
        out = new_event(
            record,
            key=target.incident_id,
            tenant=target.tenant_id,
            event_id=_derived_id(event, "enriched"),
        )
        await self.producer.send("incident-enrichments", out)
        if isinstance(event.payload, IncidentOpenedV1):
            await self._link(target, event)

    async def _link(self, target: IncidentRef, event: Envelope[Any]) -> None:
        """Show the new incident on its Sentry issue. Best effort: the enrichment is already
        durable, and a failed link is logged and counted, not retried; an installation whose
        links Sentry refuses is reported once and not tried per incident
        (:mod:`blametrail_enricher.links`)."""
        installation = event.payload.sentry.installation_uuid
        creds = self.creds.credentials(target.connection_id)
        if self.links is None or installation is None or creds is None:
            return
        key = (target.connection_id, installation)
        if self.broken_links.proven(*key):
            await self._try_link(target, event, installation, creds)
            return
        lock, users = self._link_locks.get(key, (asyncio.Lock(), 0))
        self._link_locks[key] = (lock, users + 1)
        try:
            async with lock:  # unproven: one try at a time, the others learn from it
                await self._try_link(target, event, installation, creds)
        finally:
            lock, users = self._link_locks[key]
            if users == 1:
                del self._link_locks[key]
            else:
                self._link_locks[key] = (lock, users - 1)

    async def _try_link(
        self,
        target: IncidentRef,
        event: Envelope[Any],
        installation: str,
        creds: SentryCredentials,
    ) -> None:
        links, token = self.links, token_fingerprint(creds.token)
        assert links is not None
        if self.broken_links.blocked(target.connection_id, installation, token, self.now_s()):
            LINKED.labels("skipped").inc()
            return
        web_url = self.incident_url.format(incident_id=target.incident_id)
        body = {
            "issueId": target.sentry_issue_id,
            "webUrl": web_url,
            "project": "BlameTrail",
            "identifier": target.incident_id[:8],
        }
        try:
            made = await links.create_external_issue(creds, installation, body)
        except SentryApiError as exc:
            LINKED.labels("failed").inc()
            self._link_failed(target, installation, token, exc)
            return
        if self.broken_links.healed(target.connection_id, installation):
            log.info(
                "sentry links work again",
                extra={"connection_id": target.connection_id, "installation": installation},
            )
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

    def _link_failed(
        self, target: IncidentRef, installation: str, token: str, exc: SentryApiError
    ) -> None:
        cause = link_cause(exc)
        if is_transient(exc):  # Sentry did not answer: the next incident tries again
            log.warning(
                "sentry link failed", extra={"incident_id": target.incident_id, "reason": str(exc)}
            )
            return
        news = self.broken_links.broke(
            target.connection_id, installation, token, cause, str(exc), self.now_s()
        )
        if not news:
            return
        LINKS_BROKEN.labels(cause).inc()
        log.warning(
            "sentry links broken for installation; not tried per incident until it or the"
            " token changes, or the retry delay passed",
            extra={
                "connection_id": target.connection_id,
                "installation": installation,
                "cause": cause,
                "reason": str(exc),
                "retry_after_s": self.broken_links.retry_after_s,
            },
        )

    async def _fetch(self, target: IncidentRef) -> tuple[dict[str, Any], list[Any]]:
        for attempt in (1, 2):
            creds = self.creds.credentials(target.connection_id)
            if creds is None:
                raise NoCredentials(f"no usable credentials for connection {target.connection_id}")
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
        record: ConsumerRecord[bytes, bytes] | _ParkedSource,
        reason: str,
        attempts: int = 1,
    ) -> None:
        """Sentry refused: a dead letter (for ``blametrail dlq redrive`` once a person fixed the
        cause) and the failure record."""
        await publish_to_dlq(self.producer, "incident-events-dlq", record, reason)
        await self._record_failure(target, event, reason, attempts)

    async def _record_failure(
        self, target: IncidentRef, event: Envelope[Any], reason: str, attempts: int
    ) -> None:
        failed = IncidentEnrichmentFailedV1(
            incident_id=target.incident_id,
            tenant_id=target.tenant_id,
            sentry_issue_id=target.sentry_issue_id,
            reason=reason,
            attempts=attempts,
            failed_at=self.clock(),
        )
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
