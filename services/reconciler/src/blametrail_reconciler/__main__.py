"""Composition root of the reconciler: settings -> tables, client, producer -> the sweep loop."""

from __future__ import annotations

import asyncio
import logging
import random

import httpx
from blametrail_common.crypto import SecretBox
from blametrail_common.events import ConnectionStateV1
from blametrail_common.gctune import tune_gc
from blametrail_common.kafka import EventProducer, create_producer
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.logging import configure_logging
from blametrail_common.resilience import (
    DEPENDENCIES,
    KAFKA,
    POSTGRES,
    supervise,
)
from blametrail_common.runner import run_with_health
from blametrail_common.sentry_api import HttpxSentryApi, RetryPolicy
from blametrail_common.settings import KafkaSettings, PostgresSettings, SecretsSettings

from blametrail_reconciler.connections import Connections
from blametrail_reconciler.loop import SweepLoop
from blametrail_reconciler.schedule import Schedule
from blametrail_reconciler.settings import ReconcilerSettings
from blametrail_reconciler.store import Store
from blametrail_reconciler.sweep import Sweeper

log = logging.getLogger(__name__)
TICK_S = 1.0


def policy_of(settings: ReconcilerSettings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.max_attempts,
        concurrency_per_org=settings.concurrency,
        max_rate_limit_wait_s=settings.max_rate_limit_wait_s,
    )


async def serve() -> None:
    settings, kafka = ReconcilerSettings(), KafkaSettings()
    dsn = PostgresSettings().database_url
    box = SecretBox(SecretsSettings().secret_keys.get_secret_value())
    table = CompactedTable(kafka, "cp-connections", ConnectionStateV1)
    producer = EventProducer(create_producer(kafka), kafka)
    connections = Connections(table, box, producer)
    schedule = Schedule(
        settings.interval_s,
        settings.jitter,
        random.random,
        settings.failure_backoff_s,
        settings.start_delay_s,
    )
    async with httpx.AsyncClient() as http:
        sweeper = Sweeper(HttpxSentryApi(http, policy_of(settings)), producer, dsn, settings)

        async def prepare(_: asyncio.Event) -> None:
            if not table.ready.is_set():
                await table.start()
            if not producer.started:
                await producer.start()
            DEPENDENCIES.up(KAFKA)  # the table read cp-connections, the producer started
            async with Store.open(dsn):
                DEPENDENCIES.up(POSTGRES)

        passes = SweepLoop(connections, sweeper, schedule, at_once=settings.connections_at_once)

        async def sweeps(stop: asyncio.Event) -> None:
            """Sweep each due connection, several at once, each on its own (a 401: refresh
            requested, retried next turn; any other failure: that connection backed off, the
            others go on; see :mod:`blametrail_reconciler.loop`)."""
            await passes.run(stop, TICK_S)

        async def loop(stop: asyncio.Event) -> None:
            try:
                await supervise("reconciler-start", prepare, stop)
                await supervise("reconciler", sweeps, stop)
            finally:
                if producer.started:
                    await producer.stop()
                await table.stop()

        async def ready() -> bool:
            return table.ready.is_set() and producer.started

        checks = {
            "sweeps": ready,
            "kafka": DEPENDENCIES.check(KAFKA),
            "postgres": DEPENDENCIES.check(POSTGRES),
        }
        await run_with_health(settings.host, settings.port, checks, loop)


def main() -> None:
    configure_logging("reconciler")
    tune_gc()
    asyncio.run(serve())


if __name__ == "__main__":
    main()
