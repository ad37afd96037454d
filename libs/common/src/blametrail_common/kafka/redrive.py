"""``blametrail dlq redrive``: send dead letters back to the topic they came from.

Reads ``<topic>-dlq`` with its own consumer group (so each dead letter is redriven once),
republishes each record's original key, value and headers (without the ``dlq-*`` ones) to the
topic named in its ``dlq-source-topic`` header, and commits only after the broker acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import Progress

from blametrail_common.kafka.consumer import create_consumer
from blametrail_common.kafka.dlq import DLQ_HEADERS
from blametrail_common.kafka.producer import EventProducer, create_producer
from blametrail_common.settings import KafkaSettings
from blametrail_common.topics import get_topic

__all__ = ["RedriveSummary", "dlq_command", "redrive"]

GROUP = "blametrail-dlq-redrive"


@dataclass
class RedriveSummary:
    read: int = 0
    redriven: int = 0
    skipped: int = 0


async def redrive(
    settings: KafkaSettings, topic: str, dry_run: bool = False, idle_s: float = 2.0
) -> RedriveSummary:
    """Redrive every dead letter of registry topic ``topic`` not redriven yet; returns counts."""
    source = get_topic(topic)
    summary = RedriveSummary()
    consumer = create_consumer(settings, [f"{source.name}-dlq"], GROUP)
    producer = EventProducer(create_producer(settings), settings)
    await consumer.start()
    await producer.start()
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task(f"redriving {source.name}-dlq", total=None)
            while True:
                polled = await consumer.getmany(timeout_ms=int(idle_s * 1000))
                records = [r for batch in polled.values() for r in batch]
                if not records:
                    break
                summary.read += len(records)
                for record in records:
                    headers = dict(record.headers)
                    if headers.get("dlq-source-topic", b"").decode() != producer.topic(source.name):
                        summary.skipped += 1
                        continue
                    if not dry_run:
                        kept = [(k, v) for k, v in record.headers if k not in DLQ_HEADERS]
                        await producer.send_raw(source.name, record.key, record.value, kept)
                    summary.redriven += 1
                if not dry_run:
                    await consumer.commit()
                progress.update(task, advance=len(records))
    finally:
        await producer.stop()
        await consumer.stop()
    return summary


def dlq_command(sub: Any) -> None:
    p = sub.add_parser("dlq", help="Dead-letter topics.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    r = actions.add_parser("redrive", help="Send dead letters back to their source topic.")
    r.add_argument("--topic", required=True, help="source topic, e.g. incident-events")
    r.add_argument(
        "--dry-run", action="store_true", help="count what would be redriven, change nothing"
    )
    r.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    r.set_defaults(handler=_redrive)


def _redrive(args: argparse.Namespace) -> int:
    console = Console()
    question = f"Redrive {args.topic}-dlq to {args.topic}? [y/N] "
    if not (args.yes or args.dry_run) and input(question) != "y":
        console.print("nothing done")
        return 1
    began = time.monotonic()
    s = asyncio.run(redrive(KafkaSettings(), args.topic, dry_run=args.dry_run))
    took = time.monotonic() - began
    verb = "would redrive" if args.dry_run else "redrove"
    console.print(
        f"read {s.read}, {verb} {s.redriven}, skipped {s.skipped} (other source) in {took:.1f}s"
    )
    return 0
