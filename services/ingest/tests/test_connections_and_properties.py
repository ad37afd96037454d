"""Internal-integration connections from cp-connections; and a property: never 5xx, never an unverified publish."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.events import ConnectionStateV1, new_event
from blametrail_common.kafka import EventProducer, create_producer
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.settings import KafkaSettings
from blametrail_common.signature import sign
from blametrail_common.testing import TEST_SECRET
from blametrail_devstack.ingest_testing import RawTopic, make_settings, payload_of, running_ingest
from blametrail_ingest.connections import ConnectionSecrets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BODY = b'{"action":"resolved","installation":{"uuid":"u"},"data":{"issue":{"id":"42"}}}'


def _headers(secret: str, body: bytes = BODY) -> dict[str, str]:
    return {
        "Content-Type": "application/json; charset=utf-8",
        "Sentry-Hook-Resource": "issue",
        "Sentry-Hook-Signature": sign(body, secret),
    }


async def test_internal_connection_secrets_come_from_the_compacted_topic(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    box = SecretBox(generate_key())
    live, off = f"c-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    producer = EventProducer(create_producer(kafka_settings), kafka_settings)
    await producer.start()
    for cid, enabled in ((live, True), (off, False)):
        state = ConnectionStateV1(
            connection_id=cid,
            tenant_id="acme",
            mode="internal",
            enabled=enabled,
            sentry_org_slug="acme",
            api_base_url="https://sentry.io",
            client_secrets_enc=[box.encrypt("s-old"), box.encrypt("s-new")],
            updated_at=datetime.now(UTC),
        )
        await producer.send("cp-connections", new_event(state, key=cid))
    await producer.stop()
    table = CompactedTable(kafka_settings, "cp-connections", ConnectionStateV1)
    await table.start()
    try:
        async with (
            RawTopic(kafka_settings) as raw,
            running_ingest(
                kafka_settings, make_settings(tmp_path), ConnectionSecrets(table, box)
            ) as (url, _),
            httpx.AsyncClient(base_url=url) as client,
        ):
            for secret in ("s-old", "s-new"):
                ok = await client.post(
                    f"/webhooks/sentry/{live}", content=BODY, headers=_headers(secret)
                )
                assert ok.status_code == 200
            wrong = await client.post(
                f"/webhooks/sentry/{live}", content=BODY, headers=_headers(TEST_SECRET)
            )
            assert wrong.status_code == 401
            disabled = await client.post(
                f"/webhooks/sentry/{off}", content=BODY, headers=_headers("s-new")
            )
            assert disabled.status_code == 404
            records = await raw.read(2)
            assert await raw.nothing_more(0.5)
    finally:
        await table.stop()
    assert [payload_of(r).connection_id for r in records] == [live, live]


async def test_over_the_concurrency_cap_answers_503(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    settings_ = make_settings(tmp_path, body_timeout_s=2.0)

    async def trickle():  # type: ignore[no-untyped-def]
        yield BODY[:10]
        await asyncio.sleep(1.0)
        yield BODY[10:]

    # uvicorn answers 503 once open connections (this one included) reach the cap of 3.
    async with (
        running_ingest(kafka_settings, settings_, limit_concurrency=3) as (url, _),
        httpx.AsyncClient(base_url=url) as client,
    ):
        slow = [
            asyncio.create_task(
                client.post("/webhooks/sentry", content=trickle(), headers=_headers(TEST_SECRET))
            )
            for _ in range(2)
        ]
        await asyncio.sleep(0.3)
        over = await client.post("/webhooks/sentry", content=BODY, headers=_headers(TEST_SECRET))
        done = await asyncio.gather(*slow)
    assert over.status_code == 503
    assert [r.status_code for r in done] == [200, 200]


@pytest.fixture(scope="module")
def published() -> list[bytes]:
    return []


@pytest.fixture(scope="module")
def ingest_url(
    kafka_settings: KafkaSettings, tmp_path_factory: pytest.TempPathFactory, published: list[bytes]
) -> Iterator[str]:
    """An ingest on its own thread and loop (the property test is synchronous). At teardown the
    raw topic must hold exactly the bodies the test saw accepted: no unverified publish."""
    started, stop = threading.Event(), threading.Event()
    url: list[str] = []
    seen: list[bytes] = []

    async def run() -> None:
        settings_ = make_settings(tmp_path_factory.mktemp("spool"), body_timeout_s=0.3)
        async with (
            RawTopic(kafka_settings) as raw,
            running_ingest(kafka_settings, settings_) as (u, _),
        ):
            url.append(u)
            started.set()
            while not stop.is_set():  # noqa: ASYNC110 (a threading.Event from the test thread)
                await asyncio.sleep(0.05)
            seen.extend(
                payload_of(r).body.encode("utf-8")
                for r in await raw.read(len(published), timeout_s=10)
            )
            assert await raw.nothing_more(0.5)

    thread = threading.Thread(target=asyncio.run, args=(run(),))
    thread.start()
    assert started.wait(30)
    yield url[0]
    stop.set()
    thread.join(60)
    assert sorted(seen) == sorted(published)


header_names = st.sampled_from(
    [
        "Content-Type",
        "Sentry-Hook-Resource",
        "Sentry-Hook-Signature",
        "Sentry-App-Signature",
        "Request-ID",
        "X-Other",
    ]
)  # Content-Length is left to the client: httpx refuses to send a wrong one (tested elsewhere).
header_values = st.one_of(
    st.text(max_size=80).filter(lambda s: "\n" not in s and "\r" not in s),
    st.sampled_from(["application/json", "issue", sign(BODY, TEST_SECRET)]),
)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=st.one_of(st.binary(max_size=400), st.just(BODY)),
    headers=st.lists(st.tuples(header_names, header_values), max_size=6),
)
def test_property_never_5xx_never_unverified_publish(
    ingest_url: str, published: list[bytes], body: bytes, headers: list[tuple[str, str]]
) -> None:
    # What an HTTP client can send at all: h11 refuses a value with leading or trailing blanks.
    ascii_headers = [
        (k, v) for k, v in headers if v.isascii() and v.isprintable() and v == v.strip(" \t")
    ]
    resp = httpx.post(
        f"{ingest_url}/webhooks/sentry", content=body, headers=ascii_headers, timeout=5
    )
    assert resp.status_code < 500
    if resp.status_code == 200:
        sigs = [
            v
            for k, v in ascii_headers
            if k.lower() in ("sentry-hook-signature", "sentry-app-signature")
        ]
        assert sigs == [sign(body, TEST_SECRET)]
        published.append(body)
