"""BlameTrail's incident actions, folded by the normalizer (the single writer of ``incident-events``),
and Sentry's echo of our own write-backs recognised (issue 18 §1-2).

- :func:`fold` (pure): an :class:`IncidentActionRequestedV1` from ``incident-commands`` -> the
  :class:`IncidentActionV1` on ``incident-events``. Its ``status_at`` is when the API accepted the
  action, so it is ordered against Sentry's webhooks by ``incident_order`` exactly as they are
  against each other (README, "BlameTrail and Sentry changing one incident"). Its id derives from
  the action id: a redelivered command is the very same event.
- :func:`recognise_echoes` (pure): a state webhook made by our app (an application actor, not
  Sentry itself; the connection's ``sentry_app_uuid`` where known) that matches one of the
  incident's recent write-backs (requested or confirmed, same Sentry status, within
  :data:`ECHO_SLACK` before and :data:`ECHO_WINDOW` after it, not echoed by another webhook yet)
  is our own change coming back: it becomes a :class:`WriteBackEchoedV1` on
  ``incident-writebacks`` (a confirmation on the timeline) instead of a state event. Each
  write-back is echoed once, so a later change of the same kind (a repair's echo, another app's
  resolve hours later) is not swallowed by an old one.
- :class:`WriteBacks`: each incident's recent write-backs, from the recent part of
  ``incident-writebacks`` only (a delete-policy log kept forever: read whole, a replica's start
  would grow with it without bound). It reads the records of the last ``lookback``
  (``BLAMETRAIL_NORMALIZER_ECHO_LOOKBACK_S``), then follows; the raw agent waits for it.
- :func:`install`: the commands agent, beside the raw agent.
"""

from __future__ import annotations

import hmac
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import faust
import orjson
from blametrail_common.events import DecodeError, Envelope, WebhookReceivedV1, decode, new_event
from blametrail_common.events.actions import (
    IncidentActionRequestedV1,
    WriteBackConfirmedV1,
    WriteBackEchoedV1,
    WriteBackEvent,
    WriteBackRequestedV1,
    derived_id,
)
from blametrail_common.events.incidents import (
    IncidentActionV1,
    IncidentReopenedV1,
    IncidentResolvedV1,
)
from blametrail_common.kafka import EventProducer, publish_to_dlq
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.settings import KafkaSettings
from prometheus_client import Counter

from blametrail_normalizer.normalize import Normalized

__all__ = [
    "ECHO_SLACK",
    "ECHO_WINDOW",
    "Pending",
    "WriteBackLookup",
    "WriteBacks",
    "fold",
    "install",
    "may_echo",
    "recognise_echoes",
]

log = logging.getLogger(__name__)
COMMANDS = Counter("blametrail_normalizer_commands_total", "Incident commands folded", ["outcome"])
ECHOES = Counter("blametrail_normalizer_writeback_echoes_total", "Echoes of our own write-backs")
ECHO_SLACK = timedelta(seconds=5)
"""How much older than the write-back an echo may look (Sentry's whole-second timestamps, clocks)."""
ECHO_WINDOW = timedelta(minutes=10)
"""How much later than the write-back its echo may come; a matching change after that is real."""


def fold(env: Envelope[IncidentActionRequestedV1]) -> Envelope[IncidentActionV1]:
    """Pure: the incident event of an accepted action."""
    c = env.payload
    event = IncidentActionV1(
        incident_id=c.incident_id,
        tenant_id=c.tenant_id,
        service_id=c.service_id,
        source=c.source,
        severity=c.severity,
        status_at=c.requested_at,
        sentry=c.sentry,
        snapshot=c.snapshot,
        action_id=c.action_id,
        action=c.action,
        actor=c.actor,
        status=c.status_after,
        assignee=c.assignee,
    )
    return new_event(
        event,
        key=c.incident_id,
        tenant=c.tenant_id,
        occurred_at=c.requested_at,
        event_id=derived_id("incident.action", c.action_id),
    )


@dataclass(frozen=True, slots=True)
class Pending:
    """One recent write-back of an incident: its latest state, and the raw webhook that echoed
    it (``None``: not echoed yet). Each is echoed once: by that webhook only (a redelivery of it
    is the same echo again)."""

    event: WriteBackEvent
    echoed_by: str | None = None


class WriteBackLookup(Protocol):
    def recent(self, incident_id: str) -> Sequence[Pending]: ...


def _actor(raw: WebhookReceivedV1) -> tuple[str | None, str | None]:
    try:
        doc = orjson.loads(raw.body)
    except orjson.JSONDecodeError:
        return None, None
    actor = doc.get("actor") if isinstance(doc, dict) else None
    if not isinstance(actor, dict):
        return None, None
    kind, ident = actor.get("type"), actor.get("id")
    return (kind if isinstance(kind, str) else None), (None if ident is None else str(ident))


def _echoed(
    p: IncidentResolvedV1 | IncidentReopenedV1, raw_id: str, recent: Sequence[Pending]
) -> WriteBackEvent | None:
    """The write-back ``p`` echoes: requested or confirmed (not refused or failed), to the same
    Sentry status, not yet echoed by another webhook, and at most :data:`ECHO_SLACK` before or
    :data:`ECHO_WINDOW` after it; the earliest such (Sentry sends echoes in the order of our
    PUTs). ``None``: ``p`` is a real change."""
    fits = [
        c
        for c in recent
        if c.echoed_by in (None, raw_id)
        and isinstance(c.event, WriteBackRequestedV1 | WriteBackConfirmedV1)
        and c.event.sentry_status == p.snapshot.status
        and c.event.at - ECHO_SLACK <= p.status_at <= c.event.at + ECHO_WINDOW
    ]
    again = [c for c in fits if c.echoed_by == raw_id]  # a redelivered webhook: the same echo
    best = min(again or fits, key=lambda c: c.event.at, default=None)
    return best.event if best is not None else None


def may_echo(raw: Envelope[WebhookReceivedV1], out: Normalized) -> bool:
    """Pure: could this webhook be Sentry's echo of one of our write-backs (a state change made
    by an application other than Sentry itself)? Only then must the write-backs be current."""
    if not any(
        isinstance(e.payload, IncidentResolvedV1 | IncidentReopenedV1) for _, e in out.events
    ):
        return False
    kind, actor_id = _actor(raw.payload)
    return kind == "application" and actor_id not in (None, "sentry")


def recognise_echoes(
    raw: Envelope[WebhookReceivedV1],
    out: Normalized,
    writebacks: WriteBackLookup,
    app_uuid: str | None = None,
) -> Normalized:
    """Pure: ``out`` with the state events that echo one of our recent write-backs replaced by
    confirmations. The webhook's actor must be an application other than Sentry itself, and our
    own app (``app_uuid``) where the connection knows it. Anything else passes untouched (a
    user's change, Sentry's own, another integration's, one that matches no write-back)."""
    if not may_echo(raw, out):
        return out
    _, actor_id = _actor(raw.payload)
    if app_uuid is not None and not hmac.compare_digest(str(actor_id), app_uuid):
        return out
    raw_id = str(raw.id)
    events: list[tuple[str, Envelope[Any]]] = []
    for topic, env in out.events:
        p = env.payload
        pending = (
            _echoed(p, raw_id, writebacks.recent(p.incident_id))
            if isinstance(p, IncidentResolvedV1 | IncidentReopenedV1)
            else None
        )
        if pending is None:
            events.append((topic, env))
            continue
        echo = WriteBackEchoedV1(
            **pending.model_dump(exclude={"at"}),
            at=p.status_at,
            webhook_action=raw.payload.action or "",
            actor_id=actor_id,
            raw_event_id=raw_id,
        )
        key = derived_id("writeback.echo", raw_id, p.incident_id)
        events.append(
            (
                "incident-writebacks",
                new_event(echo, key=p.incident_id, tenant=p.tenant_id, event_id=key),
            )
        )
    return replace(out, events=events)


DEFAULT_LOOKBACK = timedelta(hours=1)


class WriteBacks:
    """Each incident's write-backs of the last ``lookback`` (by the record's time), with the
    webhook that echoed each; older ones are forgotten (never matched: :data:`ECHO_WINDOW`)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        lookback: timedelta = DEFAULT_LOOKBACK,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.lookback, self._clock = max(lookback, ECHO_WINDOW + ECHO_SLACK), clock
        self._recent: dict[str, dict[str, Pending]] = {}
        self._expiry: deque[tuple[datetime, str, str]] = deque()  # (seen at, incident, writeback)
        self.table = CompactedTable(
            kafka,
            "incident-writebacks",
            WriteBackEvent,
            on_change=self._changed,
            since=lambda: clock() - self.lookback,
            keep=False,
        )

    def recent(self, incident_id: str) -> Sequence[Pending]:
        return tuple(self._recent.get(incident_id, {}).values())

    def ready(self) -> bool:
        return self.table.ready.is_set()

    async def wait_ready(self) -> None:
        await self.table.ready.wait()

    async def caught_up(self, timeout_s: float = 5.0) -> bool:
        """Wait until every write-back published so far is known: the worker's ``requested`` is
        acknowledged before its PUT, so an echo of that PUT is read only after it, and this
        closes the race of an echo handled before its write-back was read (it would be taken as
        a change, and set off another write-back). ``False`` (logged) when the table lags."""
        try:
            await self.table.caught_up(timeout_s)
        except TimeoutError as exc:
            log.warning(
                "write-backs not caught up; echoes may be missed", extra={"error": str(exc)}
            )
            return False
        return True

    def recognise(
        self, raw: Envelope[WebhookReceivedV1], out: Normalized, app_uuid: str | None = None
    ) -> Normalized:
        """:func:`recognise_echoes`, the echoes it made noted at once (the next webhook, in this
        batch or the next, cannot echo the same write-back; the record read back agrees)."""
        out = recognise_echoes(raw, out, self, app_uuid)
        for _, env in out.events:
            if isinstance(env.payload, WriteBackEchoedV1):
                self.note(env.payload)
        return out

    def note(self, event: WriteBackEvent) -> None:
        """Apply one write-back event (read from the topic, or an echo just made)."""
        self._forget_old()
        if isinstance(event, WriteBackEchoedV1):
            had = self._recent.get(event.incident_id, {}).get(event.writeback_id)
            if had is not None and had.echoed_by is None:
                self._recent[event.incident_id][event.writeback_id] = replace(
                    had, echoed_by=event.raw_event_id
                )
            return
        mine = self._recent.setdefault(event.incident_id, {})
        had = mine.get(event.writeback_id)
        mine[event.writeback_id] = Pending(event, had.echoed_by if had is not None else None)
        if had is None:
            self._expiry.append((self._clock(), event.incident_id, event.writeback_id))

    def _changed(self, _key: str, event: WriteBackEvent | None) -> None:
        if event is not None:
            self.note(event)

    def _forget_old(self) -> None:
        cutoff = self._clock() - self.lookback
        while self._expiry and self._expiry[0][0] < cutoff:
            _, incident, writeback = self._expiry.popleft()
            mine = self._recent.get(incident, {})
            mine.pop(writeback, None)
            if not mine:
                self._recent.pop(incident, None)

    def __len__(self) -> int:
        return sum(len(m) for m in self._recent.values())


def install(
    app: faust.App,
    topic: Callable[[str], faust.TopicT],
    producer: Callable[[], EventProducer],
    kafka: KafkaSettings,
    lookback: timedelta = DEFAULT_LOOKBACK,
) -> WriteBacks:
    """Register the commands agent and the write-backs table's start on ``app``."""
    writebacks = WriteBacks(kafka, lookback)

    @app.task(on_leader=False)  # type: ignore[untyped-decorator]
    async def _start_writebacks() -> None:
        await writebacks.table.start()

    @app.agent(topic("incident-commands"))
    async def fold_commands(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await _handle(app, producer(), event.message)

    return writebacks


async def _handle(app: faust.App, producer: EventProducer, message: Any) -> None:
    try:
        env = decode(message.value)
        if not isinstance(env.payload, IncidentActionRequestedV1):
            raise DecodeError(f"expected an incident command, got {env.type}")
    except DecodeError as exc:
        COMMANDS.labels("dead_letter").inc()
        await publish_to_dlq(producer, "incident-commands-dlq", message, str(exc), exc)
        return
    try:
        await producer.send("incident-events", fold(env))
    except Exception as exc:
        log.exception("command not folded; crashing without ack so it is redelivered")
        await app.crash(exc)
        raise
    COMMANDS.labels("folded").inc()
