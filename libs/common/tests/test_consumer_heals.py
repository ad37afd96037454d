"""Consumer loops survive what a broker outage does to them (issue 15, defect 3).

A commit refused because the group rebalanced while a batch was in hand (what a broker outage
or a member joining does) must not end the loop: the batch is redelivered, nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError
from blametrail_common.events import ConnectionStateV1, new_event
from blametrail_common.kafka import (
    EventProducer,
    consume,
    create_consumer,
    create_producer,
    run_batches,
)
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.metrics import CONSUMER_LAG, LOOP_RESTARTS
from blametrail_common.resilience import DEPENDENCIES
from blametrail_common.settings import KafkaSettings
from blametrail_devstack.kafka import KafkaNode
from blametrail_devstack.stack import free_port

N = 60


async def _send(kafka: KafkaSettings, numbers: range) -> None:
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    try:
        await producer.send_many_raw(
            "webhook-audit", [(f"k{i}".encode(), f"v{i}".encode()) for i in numbers]
        )
    finally:
        await producer.stop()


@pytest.mark.timeout(60)
async def test_a_commit_refused_by_a_rebalance_redelivers_the_batch_and_the_loop_goes_on(
    kafka_settings: KafkaSettings, caplog: pytest.LogCaptureFixture
) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"c{uuid.uuid4().hex[:6]}."
    )
    await ensure_topics(kafka)
    group = f"rebalance-{uuid.uuid4().hex[:6]}"
    caplog.set_level(logging.WARNING, logger="blametrail_common.kafka.consumer")
    sent = N
    await _send(kafka, range(N))

    seen_a: list[bytes] = []
    seen_b: list[bytes] = []
    stop_a, stop_b, joining = asyncio.Event(), asyncio.Event(), asyncio.Event()
    first = True

    async def handle_a(batch: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        nonlocal first
        if first:  # hold the first batch while a second member joins the group
            first = False
            joining.set()
            await asyncio.sleep(4)
        seen_a.extend(r.value or b"" for r in batch)

    async def handle_b(batch: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        seen_b.extend(r.value or b"" for r in batch)

    def everything() -> bool:
        return {*seen_a, *seen_b} >= {f"v{i}".encode() for i in range(sent)}

    # A's first batch holds records of every partition: whichever it loses in the rebalance, the
    # commit of that batch is refused (or partly revoked).
    a = create_consumer(kafka, ["webhook-audit"], group, fetch_max_wait_ms=1000)
    b = create_consumer(kafka, ["webhook-audit"], group)
    await a.start()
    loop_a = asyncio.create_task(run_batches(a, handle_a, stop_a))
    loop_b: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(joining.wait(), 20)
        await b.start()
        loop_b = asyncio.create_task(run_batches(b, handle_b, stop_b))
        deadline = asyncio.get_running_loop().time() + 40

        async def until_everything() -> None:
            while not everything():
                assert not loop_a.done(), f"member A's loop ended: {loop_a.exception()!r}"
                assert not loop_b.done(), f"member B's loop ended: {loop_b.exception()!r}"
                assert asyncio.get_running_loop().time() < deadline, "records were lost"
                await asyncio.sleep(0.2)

        await until_everything()
        while not any("commit refused after a rebalance" in r.message for r in caplog.records):
            assert not loop_a.done(), f"member A's loop ended: {loop_a.exception()!r}"
            assert asyncio.get_running_loop().time() < deadline, "no commit was refused"
            await asyncio.sleep(0.2)
        # Both members go on: later records are handled too.
        sent = 2 * N
        await _send(kafka, range(N, sent))
        await until_everything()
        assert not loop_a.done(), "member A's loop ended"
        lag = {
            s.labels["partition"]: s.value
            for metric in CONSUMER_LAG.collect()
            for s in metric.samples
            if s.labels["group"] == group
        }
        assert lag, "no blametrail_consumer_lag for the group"
        assert all(v >= 0 for v in lag.values())
    finally:
        stop_a.set()
        stop_b.set()
        await asyncio.gather(loop_a, *([loop_b] if loop_b else []), return_exceptions=True)
        await a.stop()
        await b.stop()


def _connection(cid: str) -> ConnectionStateV1:
    return ConnectionStateV1(
        connection_id=cid,
        tenant_id="t",
        mode="internal",
        enabled=True,
        sentry_org_slug=cid,
        api_base_url="https://sentry.io",
        client_secrets_enc=["x"],
        updated_at=datetime.now(UTC),
    )


@pytest.mark.timeout(120)
async def test_consume_outlives_a_broker_restart_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A dedicated broker (never the shared one) killed for ~6 s (plus its ~15 s restart) while
    records flow through a consume() loop whose handler also produces, as the suspects worker and
    the enricher do, and while that handler holds a batch (so the outage surely reaches the loop:
    its send or its commit fails, the defect's ``CommitFailedError``); nothing is lost, and a
    compacted-table reader beside it follows again afterwards. Then the broker dies again while
    the loop is idle: its probe makes readiness say ``kafka: false`` (a loop held in a handler
    does not probe, which is why that check waits for the idle phase)."""
    node = KafkaNode(tmp_path / "kafka", free_port(), free_port(), heap="384m")
    kafka = KafkaSettings(bootstrap_servers=node.bootstrap, topic_prefix="o.")
    group = f"outage-{uuid.uuid4().hex[:6]}"
    acked: set[bytes] = set()
    handled: set[bytes] = set()
    stop, outage_over = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    restarts_before = LOOP_RESTARTS.labels(group)._value.get()
    caplog.set_level(logging.WARNING, logger="blametrail_common")
    try:
        await asyncio.to_thread(node.start)
        await ensure_topics(kafka)
        feeder = EventProducer(create_producer(kafka), kafka)
        out = EventProducer(create_producer(kafka), kafka)
        await feeder.start()
        await out.start()

        held, killed = asyncio.Event(), asyncio.Event()

        held_done: list[float] = []

        async def handle(batch: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
            holding = len(handled) >= 40 and not killed.is_set()
            if holding:
                held.set()  # the broker dies while this batch is in hand, so the outage
                await killed.wait()  # surely reaches the loop (its send, its commit)
            await out.send_many_raw("incident-events", [(r.key, r.value) for r in batch])
            handled.update(r.value or b"" for r in batch)
            if holding:
                held_done.append(loop.time())

        async def feed() -> None:
            """Records at a steady pace; one whose send fails is sent again (only acknowledged
            records count)."""
            for i in range(N * 4):
                value = f"r{i}".encode()
                while value not in acked:
                    try:
                        await feeder.send_raw("webhook-audit", value, value)
                        acked.add(value)
                    except KafkaError:
                        await asyncio.sleep(0.5)
                await asyncio.sleep(0.02 if outage_over.is_set() else 0.05)

        table = CompactedTable(kafka, "cp-connections", ConnectionStateV1)
        await table.start()
        consuming = asyncio.create_task(consume(kafka, ["webhook-audit"], group, handle, stop))
        feeding = asyncio.create_task(feed())
        try:
            await asyncio.wait_for(held.wait(), 30)  # progress, then a batch in hand
            node.stop(sig=signal.SIGKILL)
            killed.set()
            away_until = loop.time() + 6
            while loop.time() < away_until:
                assert not consuming.done(), f"consume() ended: {consuming!r}"
                await asyncio.sleep(0.2)
            await asyncio.to_thread(node.start)
            back_at = loop.time()
            outage_over.set()
            await asyncio.wait_for(feeding, 60)
            deadline = loop.time() + 45
            while not handled >= acked:
                assert not consuming.done(), f"consume() ended: {consuming!r}"
                assert loop.time() < deadline, f"lost: {len(acked - handled)} records"
                await asyncio.sleep(0.2)
            # The compacted-table reader follows again too.
            await feeder.send("cp-connections", new_event(_connection("after"), key="after"))
            while table.get("after") is None:
                assert loop.time() < deadline, "the table stopped following"
                await asyncio.sleep(0.2)
            assert DEPENDENCIES.is_up("kafka")
            assert not consuming.done()
            # Idle now: a broker gone while nothing flows is noticed by the loop's own probe.
            node.stop(sig=signal.SIGKILL)
            deadline = loop.time() + 20
            while DEPENDENCIES.is_up("kafka"):
                assert loop.time() < deadline, "readiness never said kafka: false while idle"
                await asyncio.sleep(0.2)
            assert not consuming.done()
        finally:
            stop.set()
            feeding.cancel()
            await asyncio.gather(consuming, feeding, return_exceptions=True)
            await table.stop()
            await feeder.stop()
            await out.stop()
        assert len(acked) == N * 4
        # The batch in hand at the kill was carried through the outage: its effects landed once
        # the broker was back (by a redelivery after a restart or a refused commit, or by the
        # send waiting it out, whichever aiokafka took), and nothing of it was lost (above).
        refused = any("commit refused" in r.message for r in caplog.records)
        restarted = LOOP_RESTARTS.labels(group)._value.get() > restarts_before
        assert refused or restarted or (held_done and held_done[0] >= back_at - 1.0), held_done
    finally:
        node.stop(sig=signal.SIGKILL)
        shutil.rmtree(tmp_path / "kafka", ignore_errors=True)
