"""bench/enrich: the enricher's CPU per enrichment against the Sentry stand-in (issue #19).

The stand-in runs in a process of its own (``make up``'s limits: 25 calls at once and 1,000 a
second per endpoint, no added latency), so this process's CPU (``time.process_time``) is the
enricher's alone. Each round, in this order, ``N`` fresh incidents each:

* **pipeline**: :meth:`Enricher.handle` as the service composes it (its session from
  :func:`blametrail_enricher.http.sentry_client`, ``AiohttpSentryApi`` with its budgets, the
  record, a real producer to Kafka) over poll batches of ``BATCH`` ``incident.opened`` records
  held in memory (the consumer is left out): latest event, tags, then the external issue.
* **pipeline, Python's GC**: the same, with the garbage collector as Python sets it (the
  service and this benchmark run with ``blametrail_common.gctune.tune_gc``).
* **httpx 256** and **httpx cap**: the same pipeline over ``HttpxSentryApi``, the pool the
  enricher had before (256 connections, 128 kept) and one of ``BLAMETRAIL_ENRICHER_HTTP_CONNECTIONS``.
* **client**: the service's three calls alone (``AiohttpSentryApi``), no record, no Kafka.
* **bare httpx** and **bare aiohttp**: the same three calls per incident with a plain client
  (25 incidents at once, one connection each per endpoint, no budget logic; a 429 is waited
  out 50 ms and asked again), the body decoded: the floor of each library on this machine.

Printed: CPU µs per enrichment (three calls) and enrichments/s of each, medians of ``RUNS``
rounds, and the pipeline's ratio to the bare clients of the same round. The machine is shared
(2 cores): wall rates move with the load, CPU per enrichment much less.

Needs Kafka (``KAFKA_BOOTSTRAP_SERVERS``; ``set -a; . /tmp/infra/infra.env``): a topic prefix of
its own. ``BENCH_ENRICH_INCIDENTS`` (2000), ``BENCH_ENRICH_RUNS`` (3), ``BENCH_ENRICH_BATCH``
(500); the enricher's settings (``BLAMETRAIL_ENRICHER_*``) apply to the pipeline and client.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp
import httpx
from aiokafka import ConsumerRecord
from blametrail_common.events import encode, new_event
from blametrail_common.events.incidents import IncidentOpenedV1, IssueSnapshot, SentryRef
from blametrail_common.gctune import tune_gc
from blametrail_common.kafka import EventProducer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.sentry_api import (
    AiohttpSentryApi,
    HttpxSentryApi,
    RetryPolicy,
    SentryCredentials,
)
from blametrail_common.settings import KafkaSettings
from blametrail_devstack.bench import BenchResult, pythons_gc, write_result
from blametrail_enricher.http import sentry_client
from blametrail_enricher.pipeline import Enricher
from blametrail_enricher.records import Limits
from blametrail_enricher.settings import EnricherSettings

N = int(os.environ.get("BENCH_ENRICH_INCIDENTS", "2000"))
RUNS = int(os.environ.get("BENCH_ENRICH_RUNS", "3"))
BATCH = int(os.environ.get("BENCH_ENRICH_BATCH", "500"))
BARE_AT_ONCE = 25  # the stand-in's concurrent limit per endpoint
ORG, TOKEN, INSTALLATION = "acme", "bench-token", "bench-installation"
LATEST = "/api/0/organizations/acme/issues/{}/events/latest/"
TAGS = "/api/0/organizations/acme/issues/{}/tags/"
LINK = f"/api/0/sentry-app-installations/{INSTALLATION}/external-issues/"
PYTHONS_GC = "pipeline, Python's GC"
# A bare client told 429 (it outran the stand-in's window of 1,000 calls a second) waits this long
_LIMITED_S = 0.05


def _stand_in(port: int) -> None:  # the child process
    import uvicorn
    from blametrail_sentry_stub import StubState, create_app

    state = StubState(rate_limit=1000, concurrent_limit=BARE_AT_ONCE)
    state.add_internal_installation(ORG, INSTALLATION, TOKEN)
    # Idle connections outlive the clients' (5 s), so no phase meets one closed under it.
    uvicorn.run(
        create_app(state), host="127.0.0.1", port=port, log_level="warning", timeout_keep_alive=60
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_up(url: str) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            try:
                await http.get(url + "/_stub/budget")
                return
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    raise RuntimeError("the stand-in did not start")


class _Creds:
    def __init__(self, creds: SentryCredentials) -> None:
        self.creds = creds

    def credentials(self, connection_id: str) -> SentryCredentials | None:
        return self.creds

    async def request_refresh(self, connection_id: str, rejected: SentryCredentials) -> None:
        return None


def _records(first: int) -> list[ConsumerRecord[bytes, bytes]]:
    out = []
    for i in range(first, first + N):
        incident = str(uuid.uuid4())
        opened = IncidentOpenedV1(
            incident_id=incident,
            tenant_id="bench",
            service_id="s",
            source="sentry_issue",
            severity="sev2",
            status_at=datetime.now(UTC),
            sentry=SentryRef(connection_id="c", issue_id=str(i), installation_uuid=INSTALLATION),
            snapshot=IssueSnapshot(title="x"),
        )
        value = encode(new_event(opened, key=incident, tenant="bench"))
        out.append(ConsumerRecord("incident-events", 0, i, 0, 0, incident.encode(), value, None, 0, 0, ()))  # fmt: skip
    return out


async def _timed(work: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """CPU µs per incident and incidents/s of ``work`` (``N`` incidents)."""
    cpu, wall = time.process_time(), time.perf_counter()
    await work()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / N * 1e6, N / wall


def _link_body(i: int) -> dict[str, str]:
    return {"issueId": str(i), "webUrl": f"http://x/{i}", "project": "B", "identifier": str(i)}


Api = AiohttpSentryApi | HttpxSentryApi


@asynccontextmanager
async def _service_api(settings: EnricherSettings) -> AsyncIterator[Api]:
    async with sentry_client(settings) as http:
        yield AiohttpSentryApi(http, _policy(settings))


def _httpx_api(connections: int, keep: int) -> Callable[[EnricherSettings], Any]:
    @asynccontextmanager
    async def make(settings: EnricherSettings) -> AsyncIterator[Api]:
        pool = httpx.Limits(max_connections=connections, max_keepalive_connections=keep)
        async with httpx.AsyncClient(limits=pool) as http:
            yield HttpxSentryApi(http, _policy(settings))

    return make


def _policy(settings: EnricherSettings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.max_attempts, concurrency_per_org=settings.concurrency_per_org
    )


async def pipeline(
    url: str, kafka: KafkaSettings, first: int, make: Callable[[EnricherSettings], Any]
) -> tuple[float, float]:
    settings, records = EnricherSettings(), _records(first)
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    try:
        async with make(settings) as api:
            enricher = Enricher(
                api,
                _Creds(SentryCredentials(url, ORG, TOKEN)),
                producer,
                Limits(breadcrumbs=settings.breadcrumbs, max_bytes=settings.max_record_bytes),
                links=api,
                concurrency=settings.concurrency,
            )

            async def work() -> None:
                for at in range(0, N, BATCH):
                    await enricher.handle(records[at : at + BATCH])

            return await _timed(work)
    finally:
        await producer.stop()


async def client(url: str, first: int) -> tuple[float, float]:
    settings, creds = EnricherSettings(), SentryCredentials(url, ORG, TOKEN)
    async with _service_api(settings) as api:
        slots = asyncio.Semaphore(settings.concurrency)

        async def one(i: int) -> None:
            async with slots:
                issue = str(i)
                await asyncio.gather(api.latest_event(creds, issue), api.issue_tags(creds, issue))
                await api.create_external_issue(creds, INSTALLATION, _link_body(i))

        async def work() -> None:
            await asyncio.gather(*(one(i) for i in range(first, first + N)))

        return await _timed(work)


async def _bare(three: Callable[[int], Awaitable[None]], first: int) -> tuple[float, float]:
    queue = iter(range(first, first + N))

    async def worker() -> None:
        for i in queue:
            await three(i)

    async def work() -> None:
        await asyncio.gather(*(worker() for _ in range(BARE_AT_ONCE)))

    return await _timed(work)


async def bare_httpx(url: str, first: int) -> tuple[float, float]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    limits = httpx.Limits(max_connections=2 * BARE_AT_ONCE, max_keepalive_connections=2 * BARE_AT_ONCE)  # fmt: skip
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as http:

        async def call(method: str, path: str, body: Any = None) -> Any:
            while True:
                resp = await http.request(method, path, json=body)
                if resp.status_code != 429:
                    resp.raise_for_status()
                    return resp.json() if body is None else resp.content
                await asyncio.sleep(_LIMITED_S)  # a bare client that is told to wait, waits

        async def three(i: int) -> None:
            await asyncio.gather(call("GET", LATEST.format(i)), call("GET", TAGS.format(i)))
            await call("POST", LINK, _link_body(i))

        return await _bare(three, first)


async def bare_aiohttp(url: str, first: int) -> tuple[float, float]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    connector = aiohttp.TCPConnector(limit=2 * BARE_AT_ONCE)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as http:

        async def call(method: str, path: str, body: Any = None) -> Any:
            while True:
                async with http.request(method, path, json=body) as resp:
                    if resp.status != 429:
                        resp.raise_for_status()
                        return await (resp.json() if body is None else resp.read())
                await asyncio.sleep(_LIMITED_S)  # a bare client that is told to wait, waits

        async def three(i: int) -> None:
            await asyncio.gather(call("GET", LATEST.format(i)), call("GET", TAGS.format(i)))
            await call("POST", LINK, _link_body(i))

        return await _bare(three, first)


async def main() -> int:
    tune_gc()  # as the enricher runs (its composition root)
    kafka = KafkaSettings(topic_prefix=f"benchenrich{uuid.uuid4().hex[:6]}.")
    await ensure_topics(kafka)
    port = _free_port()
    stub = multiprocessing.get_context("spawn").Process(target=_stand_in, args=(port,), daemon=True)
    stub.start()
    url = f"http://127.0.0.1:{port}"
    cap = EnricherSettings().http_connections
    kinds = (
        "pipeline",
        PYTHONS_GC,
        "httpx 256",
        "httpx cap",
        "client",
        "bare httpx",
        "bare aiohttp",
    )
    seen: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    try:
        await _wait_up(url)
        await bare_httpx(url, 10_000_000)  # warm the stand-in and this process
        for run in range(RUNS):
            first = 1_000_000 * (run + 1)
            seen["pipeline"].append(await pipeline(url, kafka, first, _service_api))
            with pythons_gc():
                seen[PYTHONS_GC].append(await pipeline(url, kafka, first + 700_000, _service_api))
            seen["httpx 256"].append(await pipeline(url, kafka, first + 100_000, _httpx_api(256, 128)))  # fmt: skip
            seen["httpx cap"].append(await pipeline(url, kafka, first + 200_000, _httpx_api(cap, cap)))  # fmt: skip
            seen["client"].append(await client(url, first + 300_000))
            seen["bare httpx"].append(await bare_httpx(url, first + 400_000))
            seen["bare aiohttp"].append(await bare_aiohttp(url, first + 600_000))
            print(
                f"round {run + 1}: "
                + ", ".join(f"{k} {seen[k][-1][0]:,.0f} µs {seen[k][-1][1]:,.0f}/s" for k in kinds),
                flush=True,
            )
    finally:
        stub.terminate()
        stub.join(5)
    cpu = {k: statistics.median(c for c, _ in v) for k, v in seen.items()}
    rate = {k: statistics.median(r for _, r in v) for k, v in seen.items()}

    def ratio_to(base: str, of: str = "pipeline") -> float:
        return statistics.median(p[0] / b[0] for p, b in zip(seen[of], seen[base], strict=True))

    print(f"\n{N:,} incidents a round, {RUNS} rounds, medians (3 Sentry calls per enrichment)")
    print(f"{'':22}{'CPU µs/enrichment':>20}{'enrichments/s':>16}")
    for k in kinds:
        print(f"{k:22}{cpu[k]:>20,.0f}{rate[k]:>16,.0f}")
    print(
        f"pipeline CPU / the same pipeline on httpx as before: {ratio_to('httpx 256'):.2f}x;"
        f" / bare aiohttp: {ratio_to('bare aiohttp'):.2f}x; / bare httpx: {ratio_to('bare httpx'):.2f}x"
    )
    print(f"httpx, pool of {cap} / pool of 256: {ratio_to('httpx 256', 'httpx cap'):.2f}x CPU")
    print(f"pipeline CPU, tuned GC / Python's GC: {ratio_to(PYTHONS_GC):.2f}x")
    write_result(
        BenchResult(
            name="enrich",
            headline="enricher pipeline, CPU µs per enrichment (3 Sentry calls)",
            value=round(cpu["pipeline"]),
            baseline_label="the same 3 calls with bare aiohttp, CPU µs",
            baseline=round(cpu["bare aiohttp"]),
            goal="",
            ok=None,
            unit="µs",
            notes=(
                f"{rate['pipeline']:,.0f} enrichments/s; with Python's GC"
                f" {cpu[PYTHONS_GC]:,.0f} µs; on httpx as before"
                f" {cpu['httpx 256']:,.0f} µs, {rate['httpx 256']:,.0f}/s"
            ),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))  # asyncio's loop, as the service runs
