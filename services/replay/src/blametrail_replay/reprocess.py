"""``replay reprocess`` and ``replay reprocess-ignored``: normalization run again over the raw log.

Both read a window of ``sentry-webhooks-raw`` (by record time, up to the end seen at the start)
and run it through the normalizer's own pure :func:`normalize` against the control-plane tables
as they are now, publishing to the same topics the normalizer writes. Output event ids derive
from the raw event id, so events already produced keep their ids and the projection writes
nothing twice: a second run changes no row.

``reprocess-ignored`` first reads the audit topic for webhooks of one project that were ignored
because the project was unmapped or its mapping disabled, and re-normalizes only those, in log
order (per issue, the order they were received). Webhooks still ignored produce no new audit
record; they are counted.

Process memory the live normalizer keeps (learnt project ids, which incidents it opened) starts
empty here, and is filled as the window is read, the way a mapping present from the start would
have filled it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import ConsumerRecord
from blametrail_common.events import DecodeError, Envelope, WebhookReceivedV1, decode
from blametrail_common.events.audit import WebhookAuditedV1
from blametrail_common.kafka import EventProducer, create_producer, open_reader
from blametrail_common.settings import KafkaSettings
from blametrail_normalizer.normalize import normalize
from blametrail_normalizer.tables import ControlPlaneTables, LruDict, TableLookup

__all__ = [
    "REPROCESSABLE",
    "ReprocessSummary",
    "ignored_raw_ids",
    "reprocess",
    "reprocess_ignored",
    "scan",
]

REPROCESSABLE = frozenset({"unmapped", "inactive"})
Report = Callable[[int, int], None]  # (records read, records in the window)
Before = Callable[[TableLookup], Awaitable[None]]  # once the control-plane tables are read


@dataclass
class ReprocessSummary:
    read: int = 0
    selected: int = 0
    written: int = 0
    still_ignored: int = 0
    undecodable: int = 0
    seconds: float = 0.0


async def scan(
    kafka: KafkaSettings,
    topic: str,
    since: datetime | None,
    report: Report | None = None,
    batch: int = 2000,
) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """Batches of registry ``topic`` from ``since`` (the start when ``None``) up to the end
    offsets seen when the scan starts; in offset order per partition."""
    async with open_reader(kafka, [topic], name="reprocess", max_poll_records=batch) as log:
        reader, tps = log.consumer, log.partitions
        ends = await log.ends()
        starts = log.begins
        if since is not None:
            found = await reader.offsets_for_times(
                {tp: int(since.timestamp() * 1000) for tp in tps}
            )
            starts = {tp: ends[tp] if ot is None else ot.offset for tp, ot in found.items()}
        total = sum(ends[tp] - starts[tp] for tp in tps)
        done = 0
        for tp in tps:
            reader.seek(tp, starts[tp])
        while todo := [tp for tp in tps if await reader.position(tp) < ends[tp]]:
            polled = await reader.getmany(*todo, timeout_ms=1000)
            for tp, records in polled.items():
                inside = [r for r in records if r.offset < ends[tp]]
                done += len(inside)
                if inside:
                    yield inside
            if report is not None:
                report(done, total)


async def ignored_raw_ids(
    kafka: KafkaSettings, project_slug: str, since: datetime | None, connection_id: str | None
) -> set[str]:
    """Raw event ids of the webhooks of ``project_slug`` audited as unmapped or inactive."""
    out: set[str] = set()
    async for records in scan(kafka, "webhook-audit", since):
        for record in records:
            try:
                p = decode(record.value).payload
            except DecodeError:
                continue
            if (
                isinstance(p, WebhookAuditedV1)
                and p.reason in REPROCESSABLE
                and p.project_slug == project_slug
                and (connection_id is None or p.connection_id == connection_id)
            ):
                out.add(p.raw_event_id)
    return out


async def reprocess(
    kafka: KafkaSettings,
    since: datetime | None,
    *,
    only: set[str] | None = None,
    dry_run: bool = False,
    report: Report | None = None,
    before: Before | None = None,
) -> ReprocessSummary:
    """Normalize the raw webhooks received since ``since`` again (only the raw event ids in
    ``only`` when given) and publish the results; with ``only``, audit records are not
    published again (those webhooks are still ignored, and already audited). ``before`` is
    awaited once the control-plane tables are loaded, before the log is read (what raises
    there ends the run, nothing published)."""
    started = time.monotonic()
    summary = ReprocessSummary()
    cp = ControlPlaneTables(kafka)
    lookup = TableLookup(cp, LruDict(100_000), LruDict(1_000_000))
    producer = EventProducer(create_producer(kafka, linger_ms=20), kafka)
    await cp.start()
    await producer.start()
    try:
        if before is not None:
            await before(lookup)
        async for records in scan(kafka, "sentry-webhooks-raw", since, report):
            summary.read += len(records)
            out: list[tuple[str, Envelope[Any]]] = []
            for record in records:
                try:
                    raw = decode(record.value)
                except DecodeError:
                    summary.undecodable += 1
                    continue
                if not isinstance(raw.payload, WebhookReceivedV1):
                    summary.undecodable += 1
                    continue
                if only is not None and str(raw.id) not in only:
                    continue
                summary.selected += 1
                result = normalize(raw, lookup)
                for connection_id, project_id, slug in result.learned_projects:
                    lookup.projects[f"{connection_id}:{project_id}"] = slug
                for incident_id in result.opened:
                    lookup.incidents[incident_id] = True
                for topic, env in result.events:
                    if topic == "webhook-audit" and only is not None:
                        summary.still_ignored += 1
                    else:
                        out.append((topic, env))
            if out and not dry_run:
                await producer.send_many(out)
            summary.written += len(out)
    finally:
        await producer.stop()
        await cp.stop()
    summary.seconds = time.monotonic() - started
    return summary


async def reprocess_ignored(
    kafka: KafkaSettings,
    project_slug: str,
    connection_id: str | None,
    *,
    since: datetime | None = None,
    report: Report | None = None,
    before: Before | None = None,
) -> ReprocessSummary:
    """``replay reprocess-ignored`` without its questions: the webhooks of ``project_slug``
    (on ``connection_id`` when given) audited as unmapped or inactive since ``since``,
    normalized again (:func:`ignored_raw_ids`, then :func:`reprocess` with ``only``). Nothing
    ignored: an empty summary, nothing read."""
    ids = await ignored_raw_ids(kafka, project_slug, since, connection_id)
    if not ids:
        return ReprocessSummary()
    return await reprocess(kafka, since, only=ids, report=report, before=before)
