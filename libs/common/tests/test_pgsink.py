"""Rows and offsets in one transaction: a crash rolls back both, a restart applies each record once."""

import asyncio
import uuid
from collections.abc import Sequence

import psycopg
import pytest
from blametrail_common.kafka import EventProducer, create_consumer, create_producer
from blametrail_common.kafka.admin import admin_client, committed_offsets
from blametrail_common.kafka.pgsink import load_offsets, run_into_postgres
from blametrail_common.settings import KafkaSettings
from blametrail_common.topics import topic_name


class Crash(Exception):
    pass


async def _run(
    settings: KafkaSettings,
    dsn: str,
    group: str,
    tag: str,
    want: int,
    crash_after: int | None = None,
    ahead: bool = False,
) -> None:
    stop = asyncio.Event()
    applied = 0
    seen: set[tuple[int, int]] = set()  # what ``ahead`` was given
    in_flight = 0

    def look_ahead(records: Sequence) -> None:  # type: ignore[type-arg]
        seen.update((r.partition, r.offset) for r in records)

    async def apply(conn: psycopg.AsyncConnection, records: Sequence) -> None:  # type: ignore[type-arg]
        nonlocal applied, in_flight
        if ahead:  # every batch was polled (and looked at) before, one transaction at a time
            assert {(r.partition, r.offset) for r in records} <= seen
            assert in_flight == 0
        in_flight += 1
        await asyncio.sleep(0.01)  # the loop polls the next batch meanwhile (``ahead``)
        in_flight -= 1
        for r in records:
            key = r.key.decode()
            if not key.startswith(tag):
                continue
            # A plain INSERT: applying any record twice would violate the primary key.
            await conn.execute("INSERT INTO t_sink (k, v) VALUES (%s, %s)", (key, r.value.decode()))
            applied += 1
            if applied == crash_after:  # batches hold at most 7 records: >= 13 are committed
                raise Crash(key)
        cur = await conn.execute("SELECT count(*) FROM t_sink WHERE k LIKE %s", (tag + "%",))
        if (await cur.fetchone())[0] >= want:  # type: ignore[index]
            stop.set()

    consumer = create_consumer(settings, [], group_id=group)
    await consumer.start()
    try:
        await asyncio.wait_for(
            run_into_postgres(
                consumer,
                [topic_name("webhook-audit", settings.topic_prefix)],
                dsn,
                group,
                apply,
                stop,
                max_records=7,
                ahead=look_ahead if ahead else None,
            ),
            60,
        )
    finally:
        await consumer.stop()


@pytest.mark.parametrize("ahead", [False, True], ids=["plain", "ahead"])
async def test_crash_mid_batch_then_restart_applies_every_record_exactly_once(
    kafka_settings: KafkaSettings, database_url: str, ahead: bool
) -> None:
    """Also with ``ahead``: the next batch polled while a transaction runs, the crash coming
    out of the transaction in flight."""
    tag, group = f"s{uuid.uuid4().hex[:6]}-", f"sink-{uuid.uuid4().hex[:6]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t_sink (k text PRIMARY KEY, v text)")
    producer = EventProducer(create_producer(kafka_settings), kafka_settings)
    await producer.start()
    try:
        for i in range(40):
            await producer.send_raw("webhook-audit", f"{tag}{i:02d}".encode(), f"v{i}".encode())
    finally:
        await producer.stop()

    with pytest.raises(Crash):
        await _run(kafka_settings, database_url, group, tag, 40, crash_after=20, ahead=ahead)
    with psycopg.connect(database_url) as conn:
        partial = conn.execute(
            "SELECT count(*) FROM t_sink WHERE k LIKE %s", (tag + "%",)
        ).fetchone()[0]  # type: ignore[index]
        assert 0 < partial < 40  # earlier batches are durable, the crashed one is not

    await _run(kafka_settings, database_url, group, tag, 40, ahead=ahead)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT k, v FROM t_sink WHERE k LIKE %s ORDER BY k", (tag + "%",)
        ).fetchall()
        async_conn = await psycopg.AsyncConnection.connect(database_url)
        stored = await load_offsets(async_conn, group)
        await async_conn.close()
    assert rows == [(f"{tag}{i:02d}", f"v{i}") for i in range(40)]
    assert sum(stored.values()) >= 40
    # the mirror in Kafka (for lag tooling), committed at most every second, is whole at the stop
    admin = admin_client(kafka_settings)
    await admin.start()
    try:
        mirrored = await committed_offsets(admin, group)
    finally:
        await admin.close()
    assert {tp: o.offset for tp, o in mirrored.items() if o.offset >= 0} == stored
