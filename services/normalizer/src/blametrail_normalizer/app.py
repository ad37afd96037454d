"""The faust app: raw webhooks joined against the control-plane tables into incident events.

See ``tables.py`` for where the tables come from.

Built by :func:`create_app` (no app at import time). The agent is thin: decode -> normalize()
-> send and await the broker's acks -> next. An event is acked to faust (and so its offset
committed) only after its outputs are durable. Undecodable input goes to the dead-letter topic;
any other failure crashes the worker without acking, so the event is redelivered on restart,
never skipped (faust would otherwise ack an event whose agent raised).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import faust
from blametrail_common.events import DecodeError, Envelope, WebhookReceivedV1, decode
from blametrail_common.kafka import EventProducer, create_producer, publish_to_dlq
from blametrail_common.metrics import CONSUMER_LAG
from blametrail_common.settings import KafkaSettings
from blametrail_common.topics import get_topic, topic_name
from prometheus_client import Counter

from blametrail_normalizer.commands import WriteBacks, install, may_echo
from blametrail_normalizer.normalize import normalize
from blametrail_normalizer.observed import handle_observation
from blametrail_normalizer.settings import NormalizerSettings
from blametrail_normalizer.tables import ControlPlaneTables, LruDict, TableLookup
from blametrail_normalizer.transport import install_transport

__all__ = ["Normalizer", "create_app"]

log = logging.getLogger(__name__)
LAG_INTERVAL_S = 5.0
OUTCOMES = Counter("blametrail_normalizer_events_total", "Raw webhooks normalized", ["outcome"])


@dataclass
class Normalizer:
    app: faust.App
    lookup: TableLookup
    kafka: KafkaSettings
    _producer: EventProducer | None = None
    # (topic, partition) -> offset after the last record whose outputs are durable
    processed: dict[tuple[str, int], int] = field(default_factory=dict)
    _lag_labels: set[tuple[str, int]] = field(default_factory=set)
    echoes: WriteBacks | None = None  # our own write-backs, to recognise Sentry's echo of them

    @property
    def producer(self) -> EventProducer:
        """Built and started by the app's startup task (aiokafka needs the worker's loop)."""
        if self._producer is None:
            raise RuntimeError("the normalizer's producer is not started yet")
        return self._producer

    async def start_dependencies(self) -> None:
        # linger 0: the agent hands a whole batch's outputs over at once (send_many), so they
        # travel together without lingering; a linger would only add its delay to every batch.
        self._producer = EventProducer(create_producer(self.kafka, linger_ms=0), self.kafka)
        await self._producer.start()
        await self.lookup.cp.start()

    async def close(self) -> None:
        """Stop the app, then what it started (tables, producer)."""
        await self.app.stop()
        await self.lookup.cp.stop()
        if self.echoes is not None:  # started by the app's own task (``commands.install``)
            await self.echoes.table.stop()
        if self._producer is not None and self._producer.started:
            await self._producer.stop()

    async def report_lag(self) -> None:
        """``blametrail_consumer_lag`` of each assigned source partition: its high watermark
        (as last fetched) minus the offset after the last record processed (before the first
        one, the consumer's position). Partitions no longer assigned lose their series."""
        consumer: Any = self.app.consumer
        source = topic_name("sentry-webhooks-raw", self.kafka.topic_prefix)
        group = self.app.conf.id
        now: set[tuple[str, int]] = set()
        for tp in consumer.assignment():
            if tp.topic != source:
                continue
            end = consumer.highwater(tp)
            at = self.processed.get((tp.topic, tp.partition))
            if at is None:
                at = await consumer.position(tp)
            if end is None or at is None:
                continue
            CONSUMER_LAG.labels(group, tp.topic, str(tp.partition)).set(max(end - at, 0))
            now.add((tp.topic, tp.partition))
        for topic, partition in self._lag_labels - now:
            CONSUMER_LAG.remove(group, topic, str(partition))
        self._lag_labels = now

    def ready(self) -> bool:
        """faust's start-up (its recovery step, now table-less) done, control-plane tables caught
        up, producer started."""
        recovery: Any = getattr(self.app.tables, "recovery", None)  # faust's TableManager has one
        faust_ok = recovery is not None and recovery.completed.is_set()
        started = self._producer is not None and self._producer.started
        echoes = self.echoes is None or self.echoes.ready()
        return bool(faust_ok) and self.lookup.cp.ready.is_set() and started and echoes


def create_app(settings: NormalizerSettings, kafka: KafkaSettings) -> Normalizer:
    datadir = settings.faust_datadir()
    datadir.mkdir(parents=True, exist_ok=True)  # faust makes only the last level
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{kafka.bootstrap_servers}",
        store="memory://",
        datadir=datadir,
        topic_partitions=get_topic("sentry-webhooks-raw").partitions,
        topic_replication_factor=1,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        # A member killed without leaving holds its partitions until its session expires
        # (faust's default 60 s: a restart sat 54 s in "(Re-)joining group"). Static
        # membership hands a restarted replica its partitions back at once; the short session
        # bounds how long a replica that is gone for good (node loss) holds them.
        consumer_group_instance_id=settings.group_instance_id(),
        broker_session_timeout=kafka.session_timeout_ms / 1000,
        broker_heartbeat_interval=kafka.session_timeout_ms / 3000,
        web_enabled=False,
        producer_acks=-1,
    )
    install_transport(app, kafka)

    def external(name: str) -> faust.TopicT:
        spec = get_topic(name)
        return app.topic(
            topic_name(name, kafka.topic_prefix),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=spec.partitions,
        )

    # Learnt project ids and opened-incident flags are process memory, not faust tables: faust's
    # table recovery hung on restart here once its changelogs held data, and losing these is
    # harmless (see tables.py).
    projects: LruDict[str, str] = LruDict(100_000)
    incidents: LruDict[str, bool] = LruDict(1_000_000)
    cp = ControlPlaneTables(kafka)
    lookup = TableLookup(cp, projects, incidents)
    normalizer = Normalizer(app, lookup, kafka)
    lookback = timedelta(seconds=settings.echo_lookback_s)
    normalizer.echoes = install(app, external, lambda: normalizer.producer, kafka, lookback)

    @app.task(on_leader=False)  # type: ignore[untyped-decorator]
    async def _start_dependencies() -> None:
        await normalizer.start_dependencies()

    @app.timer(LAG_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def _consumer_lag() -> None:
        try:
            await normalizer.report_lag()
        except Exception as exc:  # a metric must never take the worker down
            log.warning("consumer lag not measured", extra={"error": repr(exc)})

    @app.agent(external("sentry-webhooks-raw"))
    async def normalize_raw(stream: faust.StreamT[bytes]) -> None:
        # Batches of what is already fetched (up to batch_max, waiting batch_within_s at most):
        # faust acks a batch's events only once _handle_batch returned, i.e. once every output
        # is durable; one round trip to the broker per batch instead of one per webhook.
        take: Any = stream  # faust's StreamT does not declare take_events (Stream has it)
        batches = take.take_events(settings.batch_max, settings.batch_within_s)
        async for events in batches:
            await _handle_batch(normalizer, [event.message for event in events])

    @app.agent(external("sentry-observations"))  # the reconciler's sweeps (observed.py)
    async def fold_observations(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await handle_observation(normalizer, event.message)

    return normalizer


async def _handle(n: Normalizer, message: Any) -> None:
    """One raw webhook (a batch of one): see :func:`_handle_batch`."""
    await _handle_batch(n, [message])


async def _handle_batch(n: Normalizer, messages: Sequence[Any]) -> None:
    """Normalize raw webhooks in their order, then publish every output in one go and return
    once the broker acknowledged them all (the order within each output partition is the
    input's: one idempotent producer, records handed over in order). What a webhook teaches
    (project slugs, opened incidents) is remembered at once, so the next webhook of the batch
    sees it; a failure crashes the worker without acking, so the whole batch is redelivered."""
    await n.lookup.cp.ready.wait()  # never normalize against half-loaded mappings
    if n.echoes is not None:
        await n.echoes.wait_ready()  # nor before our own recent write-backs are known (echoes)
    outputs: list[tuple[str, Envelope[Any]]] = []
    outcomes: list[str] = []
    caught_up = False
    try:
        for message in messages:
            try:
                raw = decode(message.value)
                if not isinstance(raw.payload, WebhookReceivedV1):
                    raise DecodeError(f"expected a raw webhook, got {raw.type}")
            except DecodeError as exc:
                outcomes.append("dead_letter")
                await publish_to_dlq(n.producer, "sentry-webhooks-raw-dlq", message, str(exc), exc)
                continue
            out = normalize(raw, n.lookup)
            if n.echoes is not None:
                if not caught_up and may_echo(raw, out):
                    # everything published before this batch was read (an echoed write-back's
                    # `requested` among it) is known; once a batch is enough
                    caught_up = await n.echoes.caught_up()
                cid = raw.payload.connection_id
                conn = n.lookup.connection(cid) if cid else None
                out = n.echoes.recognise(raw, out, conn.sentry_app_uuid if conn else None)
            outputs.extend(out.events)
            for connection_id, project_id, slug in out.learned_projects:
                n.lookup.projects[f"{connection_id}:{project_id}"] = slug
            for incident_id in out.opened:
                n.lookup.incidents[incident_id] = True
            audited = out.events and out.events[0][0] == "webhook-audit"
            outcomes.append("audited" if audited else "incident")
        await n.producer.send_many(outputs)
    except Exception as exc:
        log.exception("normalization failed; crashing without ack so the event is redelivered")
        await n.app.crash(exc)
        raise
    for message in messages:
        n.processed[(message.topic, message.partition)] = message.offset + 1
    for outcome in outcomes:
        OUTCOMES.labels(outcome).inc()
