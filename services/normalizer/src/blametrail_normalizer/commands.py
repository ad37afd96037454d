"""BlameTrail's incident actions, folded by the normalizer (the single writer of ``incident-events``),
and Sentry's echo of our own write-backs recognised (issue 18 §1-2).

- :func:`fold` (pure): an :class:`IncidentActionRequestedV1` from ``incident-commands`` -> the
  :class:`IncidentActionV1` on ``incident-events``. Its ``status_at`` is when the API accepted the
  action, so it is ordered against Sentry's webhooks by ``incident_order`` exactly as they are
  against each other (README, "BlameTrail and Sentry changing one incident"). Its id derives from
  the action id: a redelivered command is the very same event.
- :func:`recognise_echoes` (pure): a state webhook made by an application (not Sentry itself)
  that matches the incident's pending write-back (same Sentry status, not older than it) is our
  own change coming back: it becomes a :class:`WriteBackEchoedV1` on ``incident-writebacks`` (a
  confirmation on the timeline) instead of a state event.
- :class:`WriteBacks`: the latest write-back per incident, from the recent part of
  ``incident-writebacks`` only (a delete-policy log kept forever: read whole, a replica's start
  would grow with it without bound). It reads the records of the last ``lookback``
  (``BLAMETRAIL_NORMALIZER_ECHO_LOOKBACK_S``), then follows; the raw agent waits for it.
- :func:`install`: the commands agent, beside the raw agent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import faust
import orjson
from blametrail_common.events import DecodeError, Envelope, WebhookReceivedV1, decode, new_event
from blametrail_common.events.actions import (
    IncidentActionRequestedV1,
    WriteBackEchoedV1,
    WriteBackEvent,
    WriteBackFailedV1,
    WriteBackRefusedV1,
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

__all__ = ["ECHO_SLACK", "WriteBackLookup", "WriteBacks", "fold", "install", "recognise_echoes"]

log = logging.getLogger(__name__)
COMMANDS = Counter("blametrail_normalizer_commands_total", "Incident commands folded", ["outcome"])
ECHOES = Counter("blametrail_normalizer_writeback_echoes_total", "Echoes of our own write-backs")
ECHO_SLACK = timedelta(seconds=5)
"""How much older than the write-back an echo may look (Sentry's whole-second timestamps, clocks)."""


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


class WriteBackLookup(Protocol):
    def get(self, key: str) -> WriteBackEvent | None: ...


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


def recognise_echoes(
    raw: Envelope[WebhookReceivedV1], out: Normalized, writebacks: WriteBackLookup
) -> Normalized:
    """Pure: ``out`` with the state events that echo our own pending write-back replaced by
    confirmations. Anything else passes untouched (a user's change, Sentry's own, another
    integration's change to another state, a write-back that was refused or failed)."""
    if not any(
        isinstance(e.payload, IncidentResolvedV1 | IncidentReopenedV1) for _, e in out.events
    ):
        return out
    kind, actor_id = _actor(raw.payload)
    if kind != "application" or actor_id in (None, "sentry"):
        return out
    events: list[tuple[str, Envelope[Any]]] = []
    for topic, env in out.events:
        p = env.payload
        pending = writebacks.get(p.incident_id) if hasattr(p, "incident_id") else None
        if (
            isinstance(p, IncidentResolvedV1 | IncidentReopenedV1)
            and pending is not None
            and not isinstance(pending, WriteBackRefusedV1 | WriteBackFailedV1)
            and p.snapshot.status == pending.sentry_status
            and p.status_at >= pending.at - ECHO_SLACK
        ):
            echo = WriteBackEchoedV1(
                **pending.model_dump(exclude={"at"}),
                at=p.status_at,
                webhook_action=raw.payload.action or "",
                actor_id=actor_id,
                raw_event_id=str(raw.id),
            )
            key = derived_id("writeback.echo", str(raw.id), p.incident_id)
            events.append(
                (
                    "incident-writebacks",
                    new_event(echo, key=p.incident_id, tenant=p.tenant_id, event_id=key),
                )
            )
            continue
        events.append((topic, env))
    return replace(out, events=events)


DEFAULT_LOOKBACK = timedelta(hours=1)


class WriteBacks:
    """The latest write-back event per incident id, of those written in the last ``lookback``."""

    def __init__(self, kafka: KafkaSettings, lookback: timedelta = DEFAULT_LOOKBACK) -> None:
        self.table = CompactedTable(
            kafka,
            "incident-writebacks",
            WriteBackEvent,
            since=lambda: datetime.now(UTC) - lookback,
        )

    def get(self, key: str) -> WriteBackEvent | None:
        return self.table.get(key)

    def ready(self) -> bool:
        return self.table.ready.is_set()

    async def wait_ready(self) -> None:
        await self.table.ready.wait()


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
