"""bench/latency: from webhook 2xx to incident row (and to enrichment) through the running stack.

Needs the services of ``make up`` (``make bench`` brings them up): posts signed ``issue.created``
webhooks, each for a new Sentry issue, at a fixed rate to the demo connection, and watches
Postgres for each incident row and its enrichment (10 ms poll resolution). The baseline in the
same run is the bare round trip of one SELECT, i.e. the floor of this measurement.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import httpx
import psycopg
from blametrail_common.signature import sign
from blametrail_common.testing import signed_fixture
from blametrail_devstack.__main__ import read_env
from blametrail_devstack.bench import BenchResult, write_result
from rich.console import Console
from rich.table import Table

RATE, SECONDS = 200, 10
ENV = Path(__file__).resolve().parents[2] / ".local" / "stack.env"


async def main() -> None:
    env = read_env(ENV)
    if "BLAMETRAIL_DEMO_WEBHOOK_URL" not in env:
        raise SystemExit("run `make up` first (bench/latency measures the running services)")
    body0, headers0 = signed_fixture("issue.created")
    base = int(time.time()) * 10_000
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    enriched: dict[str, float] = {}
    total = RATE * SECONDS

    async def post(client: httpx.AsyncClient, i: int) -> None:
        issue = str(base + i)
        body = body0.replace(b"5912345678", issue.encode())
        headers = {
            **headers0,
            "Sentry-Hook-Signature": sign(body, env["BLAMETRAIL_DEMO_CLIENT_SECRET"]),
        }
        resp = await client.post(env["BLAMETRAIL_DEMO_WEBHOOK_URL"], content=body, headers=headers)
        resp.raise_for_status()
        sent[issue] = time.perf_counter()

    async def watch(conn: psycopg.AsyncConnection) -> None:
        low = str(base)
        while len(enriched) < total:
            rows = await (
                await conn.execute(
                    "SELECT i.sentry->>'issue_id', e.status FROM incidents i"
                    " LEFT JOIN incident_enrichments e USING (incident_id) WHERE i.sentry->>'issue_id' >= %s",
                    (low,),
                )
            ).fetchall()
            now = time.perf_counter()
            for issue, status in rows:
                if issue in sent:
                    seen.setdefault(issue, now)
                    if status is not None:
                        enriched.setdefault(issue, now)
            await asyncio.sleep(0.01)

    async with await psycopg.AsyncConnection.connect(env["DATABASE_URL"], autocommit=True) as conn:
        floor = []
        for _ in range(50):
            began = time.perf_counter()
            await conn.execute("SELECT 1")
            floor.append(time.perf_counter() - began)
        watcher = asyncio.create_task(watch(conn))
        async with httpx.AsyncClient(timeout=5) as client:
            start, tasks = time.perf_counter(), []
            for i in range(total):
                await asyncio.sleep(max(0.0, start + i / RATE - time.perf_counter()))
                tasks.append(asyncio.create_task(post(client, i)))
            await asyncio.gather(*tasks)
        await asyncio.wait_for(watcher, 120)
    row = sorted(seen[k] - sent[k] for k in sent)
    rich = sorted(enriched[k] - sent[k] for k in sent)

    def pct(values: list[float], q: float) -> str:
        return f"{values[min(int(len(values) * q), len(values) - 1)] * 1000:.0f} ms"

    table = Table("measure", "value", "goal", title=f"bench/latency ({total} webhooks at {RATE}/s)")
    table.add_row(
        "floor: one SELECT round trip, median", f"{statistics.median(floor) * 1000:.1f} ms", ""
    )
    table.add_row("2xx -> incident row, p50", pct(row, 0.5), "<= 100 ms")
    table.add_row("2xx -> incident row, p99", pct(row, 0.99), "<= 1 s")
    table.add_row("2xx -> enrichment stored, p50", pct(rich, 0.5), "")
    table.add_row("2xx -> enrichment stored, p99", pct(rich, 0.99), "")
    Console().print(table)
    p99 = row[min(int(len(row) * 0.99), len(row) - 1)] * 1000
    write_result(
        BenchResult(
            name="latency",
            headline=f"2xx -> incident row p99 at {RATE}/s",
            value=p99,
            baseline_label="one SELECT round trip",
            baseline=statistics.median(floor) * 1000,
            goal="<= 1,000 ms",
            ok=p99 <= 1000,
            unit="ms",
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
