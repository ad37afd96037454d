"""Test helpers over the real broker: end offsets, running a Postgres sink up to them, checksums."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import psycopg
from aiokafka.structs import TopicPartition
from blametrail_common.kafka import create_consumer
from blametrail_common.kafka.admin import admin_client
from blametrail_common.kafka.pgsink import ApplyBatch, run_into_postgres
from blametrail_common.settings import KafkaSettings
from blametrail_common.topics import topic_name

__all__ = ["end_offsets", "project_until", "table_checksums"]


async def end_offsets(kafka: KafkaSettings, topics: Sequence[str]) -> dict[str, int]:
    """Sum of end offsets per registry topic (its record count when nothing was deleted)."""
    names = [topic_name(t, kafka.topic_prefix) for t in topics]
    admin = admin_client(kafka)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    tps = [TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]]
    reader = create_consumer(kafka, [], group_id=None)
    await reader.start()
    try:
        ends = await reader.end_offsets(tps)
    finally:
        await reader.stop()
    totals = dict.fromkeys(names, 0)
    for tp, end in ends.items():
        totals[tp.topic] += end
    return totals


async def project_until(
    kafka: KafkaSettings,
    dsn: str,
    group: str,
    topics: Sequence[str],
    apply: ApplyBatch,
    end: dict[str, int],
    timeout_s: float = 60,
) -> None:
    """Run a Postgres sink for ``group`` until it stored offsets summing to ``end`` per topic."""
    stop = asyncio.Event()
    consumer = create_consumer(kafka, [], group)
    await consumer.start()

    async def watch() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            while True:
                rows = await (
                    await conn.execute(
                        "SELECT topic, sum(next_offset) FROM consumer_offsets WHERE group_id = %s"
                        " GROUP BY topic",
                        (group,),
                    )
                ).fetchall()
                stored: dict[str, int] = {str(r[0]): int(r[1]) for r in rows}
                if all(stored.get(t, 0) >= n for t, n in end.items()):
                    stop.set()
                    return
                await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch())
    try:
        names = [topic_name(t, kafka.topic_prefix) for t in topics]
        await asyncio.wait_for(
            run_into_postgres(consumer, names, dsn, group, apply, stop), timeout_s
        )
    finally:
        watcher.cancel()
        await consumer.stop()


async def table_checksums(dsn: str, keys: dict[str, str]) -> dict[str, str]:
    """``rows:md5`` of each table (``keys``: table -> ordering column), independent of product code."""
    out = {}
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for table, key in keys.items():
            row: Any = await (
                await conn.execute(
                    f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY {key})), '')"  # noqa: S608
                    f" FROM {table} t"
                )
            ).fetchone()
            out[table] = row[0] if row else ""
    return out
