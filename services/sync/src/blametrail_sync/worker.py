"""The write-back worker's batch step: incident events in, Sentry issue updates and write-back
events out (issue 18 §2).

Contract (with :func:`blametrail_common.kafka.pgsink.run_into_postgres`, which calls
:meth:`WriteBacks.apply` inside the transaction that also stores the batch's next offsets):
:meth:`WriteBacks.apply` returns only once every write-back of the batch has a durable outcome
acknowledged by the broker; the winners and what was written are then committed with the
offsets. A crash before that commit rolls both back, the batch is read again and the same
write-backs are made again: the ``PUT`` sets a state (Sentry sends no webhook for an update that
changes nothing) and the events keep their ids (derived from the write-back's), so a
redelivery is idempotent.

Per write-back: ``incident.writeback.requested`` (acknowledged before the call, so the
normalizer knows the pending write-back when Sentry's echo arrives), then the ``PUT`` through the
shared client (its per-organization budget, retries and rate-limit holds), then one of
``confirmed``; ``refused`` (Sentry answered no: 403 missing ``event:write``, 404, 400; or the
connection is disabled or gone) - never retried, the BlameTrail action stands; ``failed`` (Sentry
did not answer: :class:`~blametrail_common.sentry_api.GaveUp`; a 401 for which a refresh was
asked; or an enabled connection whose token cannot be read now)
with the winning event dead-lettered on ``incident-events-dlq``, so ``blametrail dlq redrive``
tries it once more.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from aiokafka import ConsumerRecord
from blametrail_common.events import ConnectionStateV1, DecodeError, decode, new_event
from blametrail_common.events.actions import (
    WriteBackConfirmedV1,
    WriteBackEvent,
    WriteBackFailedV1,
    WriteBackRefusedV1,
    WriteBackRequestedV1,
    derived_id,
    sentry_status_for,
)
from blametrail_common.events.incidents import IncidentEvent
from blametrail_common.kafka import EventProducer, publish_to_dlq
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.sentry_api import (
    GaveUp,
    HttpxSentryApi,
    NotFound,
    SentryApiError,
    TokenRejected,
)
from blametrail_common.sentry_credentials import ConnectionCredentials
from prometheus_client import Counter

from blametrail_sync import store
from blametrail_sync.decide import Decision, Tracked, decide
from blametrail_sync.plan import CONTESTED, Plan, Winner, written

__all__ = ["WRITEBACKS", "WriteBacks", "http_status_of"]

log = logging.getLogger(__name__)

WRITEBACKS = Counter(
    "blametrail_sentry_writeback_total",
    "Write-backs of incident states to Sentry issues, by outcome",
    ["outcome"],
)
EVENTS = Counter(
    "blametrail_sync_events_total", "Incident events read by the sync worker", ["kind"]
)

_STATUS = re.compile(r": (\d{3})\b")


def http_status_of(exc: SentryApiError) -> int | None:
    """Pure: the HTTP status of Sentry's refusal (the shared client names it in the reason)."""
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, TokenRejected):
        return 401
    found = _STATUS.search(str(exc))
    return int(found.group(1)) if found else None


class WriteBacks:
    """Applies batches of ``incident-events`` records (see the module's contract)."""

    def __init__(
        self,
        api: HttpxSentryApi,
        connections: CompactedTable[ConnectionStateV1],
        credentials: ConnectionCredentials,
        producer: EventProducer,
        *,
        concurrency: int = 8,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.api, self.connections, self.credentials = api, connections, credentials
        self.producer, self.clock = producer, clock
        self._slots = asyncio.Semaphore(concurrency)

    def enabled(self, connection_id: str) -> bool:
        conn = self.connections.get(connection_id)
        return conn is not None and conn.writeback

    async def apply(
        self, conn: psycopg.AsyncConnection, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> None:
        events: list[tuple[int, IncidentEvent]] = []
        for index, record in enumerate(records):
            event = _incident_event(record)
            if event is not None:
                events.append((index, event))
        if not events:
            return
        known = await store.load(conn, sorted({e.incident_id for _, e in events}))
        decisions = decide(events, known, self.enabled)

        async def one(d: Decision) -> Tracked:
            if d.plan is None or d.winner_index is None:
                return d.tracked
            async with self._slots:
                return await self._write(d.tracked, d.plan, records[d.winner_index])

        # every write-back of the batch ends before a failure is raised: none is left running
        # while the batch is retried (its PUT then racing the retry's)
        outcomes = await asyncio.gather(*(one(d) for d in decisions), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        await store.save(conn, [o for o in outcomes if not isinstance(o, BaseException)])

    async def _write(self, t: Tracked, todo: Plan, record: ConsumerRecord[bytes, bytes]) -> Tracked:
        sentry = sentry_status_for(todo.status)
        assert sentry is not None  # plan() writes back only mirrored states
        common: dict[str, Any] = {
            "writeback_id": str(derived_id("writeback", t.incident_id, *_again(t.winner))),
            "incident_id": t.incident_id,
            "tenant_id": t.tenant_id,
            "connection_id": t.connection_id,
            "issue_id": t.issue_id,
            "status": todo.status,
            "sentry_status": sentry[0],
            "sentry_substatus": sentry[1],
            "cause": todo.cause,
            "action_id": t.winner.action_id if todo.cause == "action" else None,
        }
        creds = self.credentials.credentials(t.connection_id)
        if creds is None:
            conn = self.connections.get(t.connection_id)
            if conn is None or not conn.enabled:
                await self._refused(common, "the connection is disabled or gone")
                return t
            # enabled, but its token is missing or unreadable for now (a refresh or a key
            # rotation in flight): not a refusal, so the redrive of the dead letter retries it
            reason = "the connection's token is not usable now"
            await self._failed(common, record, reason, RuntimeError(reason))
            return t
        await self._publish(WriteBackRequestedV1(**common, at=self.clock()))
        body: dict[str, Any] = {"status": sentry[0]}
        if sentry[1] is not None:
            body["substatus"] = sentry[1]
        path = f"/api/0/organizations/{creds.org_slug}/issues/{t.issue_id}/"
        try:
            await self.api.call("PUT", creds, path, body)
        except TokenRejected as exc:
            await self.credentials.request_refresh(t.connection_id, creds)
            await self._failed(common, record, f"{exc}; a token refresh was asked for", exc)
            return t
        except GaveUp as exc:
            await self._failed(common, record, str(exc), exc)
            return t
        except SentryApiError as exc:
            await self._refused(common, str(exc), http_status_of(exc))
            return t
        # when the PUT returned: the client may have held it for long (retries, rate limits), and
        # it overwrote any Sentry change made until then (the repair rule compares with this)
        answered_at = self.clock()
        await self._publish(WriteBackConfirmedV1(**common, at=answered_at))
        WRITEBACKS.labels("confirmed").inc()
        log.info(
            "written back",
            extra={"incident_id": t.incident_id, "status": todo.status, "cause": todo.cause},
        )
        return Tracked(
            t.incident_id,
            t.tenant_id,
            t.connection_id,
            t.issue_id,
            written(t.winner, todo.status, answered_at),
        )

    async def _refused(
        self, common: dict[str, Any], reason: str, http_status: int | None = None
    ) -> None:
        await self._publish(
            WriteBackRefusedV1(
                **common, at=self.clock(), reason=reason[:500], http_status=http_status
            )
        )
        WRITEBACKS.labels("refused").inc()
        log.warning(
            "sentry refused the write-back",
            extra={"incident_id": common["incident_id"], "http_status": http_status},
        )

    async def _failed(
        self,
        common: dict[str, Any],
        record: ConsumerRecord[bytes, bytes],
        reason: str,
        exc: BaseException,
    ) -> None:
        await self._publish(WriteBackFailedV1(**common, at=self.clock(), reason=reason[:500]))
        await publish_to_dlq(self.producer, "incident-events-dlq", record, reason, exc)
        WRITEBACKS.labels("failed").inc()
        log.warning(
            "write-back failed; dead-lettered", extra={"incident_id": common["incident_id"]}
        )

    async def _publish(self, event: WriteBackEvent) -> None:
        """Send ``event`` (acknowledged); its id derives from the write-back's and its kind."""
        event_id = derived_id(event.EVENT_TYPE, event.writeback_id)
        await self.producer.send(
            "incident-writebacks",
            new_event(event, key=event.incident_id, tenant=event.tenant_id, event_id=event_id),
        )


def _again(winner: Winner) -> tuple[str, ...]:
    """What tells a write-back of ``winner`` from an earlier one of the same winner: a contested
    winner is written again (plan rule 3), as another write-back (its own echo, its own id)."""
    if winner.written_order != CONTESTED:
        return (winner.order,)
    return winner.order, "again", winner.written_at.isoformat() if winner.written_at else ""


def _incident_event(record: ConsumerRecord[bytes, bytes]) -> IncidentEvent | None:
    """The incident event in ``record``; ``None`` for anything else. An undecodable record is
    counted and skipped here: the enricher dead-letters it (one dead letter per record)."""
    try:
        env = decode(record.value or b"")
    except DecodeError as exc:
        EVENTS.labels("undecodable").inc()
        log.warning(
            "undecodable incident event skipped",
            extra={"partition": record.partition, "offset": record.offset, "error": str(exc)},
        )
        return None
    if not isinstance(env.payload, IncidentEvent):
        EVENTS.labels("other").inc()
        return None
    EVENTS.labels("incident").inc()
    return env.payload
