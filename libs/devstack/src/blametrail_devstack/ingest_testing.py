"""Test support for ingest: a real ingest (uvicorn on a free port) and a reader of the raw topic.

Used by ingest's tests, the end-to-end tests and bench/ingest; development only, so it ships with
devstack, not with the service.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from aiokafka import ConsumerRecord
from blametrail_common.events import WebhookReceivedV1, decode
from blametrail_common.kafka import create_consumer
from blametrail_common.settings import KafkaSettings
from blametrail_common.testing import TEST_SECRET
from blametrail_ingest.app import create_app
from blametrail_ingest.connections import SecretsLookup
from blametrail_ingest.publisher import WebhookPublisher
from blametrail_ingest.settings import IngestSettings


class NoConnections:
    def secrets_for(self, connection_id: str) -> list[str] | None:
        return None

    def ready(self) -> bool:
        return True


def make_settings(spool: Path, **over: Any) -> IngestSettings:
    return IngestSettings(
        public_client_secrets=f"rotated-old-secret,{TEST_SECRET}", spool_dir=spool, **over
    )


@asynccontextmanager
async def running_ingest(
    kafka: KafkaSettings,
    settings: IngestSettings,
    connections: SecretsLookup | None = None,
    limit_concurrency: int | None = None,
) -> AsyncIterator[tuple[str, WebhookPublisher]]:
    publisher = WebhookPublisher.build(settings, kafka)
    app = create_app(settings, publisher, connections or NoConnections())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_level="warning", http="httptools", limit_concurrency=limit_concurrency
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    await publisher.connected_within(4.0)  # down-broker tests go on unconnected
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", publisher
    finally:
        server.should_exit = True
        await task
        sock.close()


class RawTopic:
    """Reads ``sentry-webhooks-raw`` of this session from where it was when created."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._consumer = create_consumer(
            kafka, ["sentry-webhooks-raw"], group_id=None, auto_offset_reset="latest"
        )

    async def __aenter__(self) -> RawTopic:
        await self._consumer.start()
        while not self._consumer.assignment():  # noqa: ASYNC110 (aiokafka offers no event)
            await asyncio.sleep(0.02)
        for tp in self._consumer.assignment():  # pin "now" before anything is sent
            await self._consumer.position(tp)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def read(
        self,
        n: int,
        timeout_s: float = 10.0,
        where: Callable[[ConsumerRecord[bytes, bytes]], bool] | None = None,
    ) -> list[ConsumerRecord[bytes, bytes]]:
        out: list[ConsumerRecord[bytes, bytes]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(out) < n and loop.time() < deadline:
            polled = await self._consumer.getmany(timeout_ms=200)
            for batch in polled.values():
                out.extend(r for r in batch if where is None or where(r))
        return out

    async def nothing_more(self, wait_s: float = 1.0) -> bool:
        return await self.read(1, timeout_s=wait_s) == []


def payload_of(record: ConsumerRecord[bytes, bytes]) -> WebhookReceivedV1:
    payload = decode(record.value).payload
    assert isinstance(payload, WebhookReceivedV1)
    return payload
