"""bench/storm: the whole pipeline under a storm of new issues, at increasing rates.

Drives the services ``make up`` runs (``make bench`` brings them up): for each rate
(``BENCH_STORM_RATES``, default 250,500,1000,2000,3000 webhooks/s), ``BENCH_STORM_SECONDS`` (10)
of signed ``issue.created`` webhooks, each for a new Sentry issue, posted open loop to ingest's
route of the demo connection over keep-alive connections; then it waits for that step's last
incident row and last enrichment before the next step. Postgres is polled (every
``BENCH_STORM_POLL_MS``, 50, for the oldest ``BENCH_STORM_POLL_WINDOW``, 2,000, pending ids) for
each incident's row (by its deterministic id), and every ``BENCH_STORM_ENRICH_POLL_MS`` (500) for
its enrichment: a row's time is that of the poll that found it, so a latency is late by up to a
poll.

Reported per rate: non-2xx answers, spooled 2xx (``"queued": true``), ack p50/p99, webhook-2xx ->
incident row p50/p99, time from the step's last ack to its last incident row and to its last
enrichment, and enrichments/s (first to last enrichment of the step) beside what the stand-in's
budget permits (``/_stub/budget``: requests per window per endpoint, concurrent limit over its
latency; one call per endpoint per enrichment), and the stand-in's 429s. At the end, counted in
Postgres over every step: lost (acknowledged, no incident row) and duplicated (more timeline
events or enrichment rows than incidents). The headline: the highest rate whose p99 webhook ->
incident row is <= 1 s with every webhook acknowledged and every row there (goal >= 2,000/s),
beside the highest rate offered in the same run; and enrichments/s over what the budget permits
(goal >= 0.8x).

Where the cores go: per rate, the CPU each part of the stack used from the step's first webhook
to its last enrichment (every service of ``make up`` by its pid file, the broker and Postgres by
their listening process, Postgres with its backends, and this load generator), less what the part
uses idle (measured for ``BENCH_STORM_IDLE_S``, 3, before the first step), per acknowledged
webhook; and the cores the whole stack would need to keep up with the goal's rate at that cost.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import psycopg
from blametrail_common.events.incidents import incident_id_for
from blametrail_common.signature import sign
from blametrail_common.testing import signed_fixture
from blametrail_devstack.__main__ import read_env
from blametrail_devstack.bench import (
    BenchResult,
    broker_pid,
    cpu_seconds,
    postgres_pid,
    process_tree_cpu,
    write_result,
)
from blametrail_devstack.demo import demo_org_id
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

ENV = Path(__file__).resolve().parents[2] / ".local" / "stack.env"
RUN = ENV.parent / "run"  # the supervisor's <service>.pid files
RATES = [int(r) for r in os.environ.get("BENCH_STORM_RATES", "250,500,1000,2000,3000").split(",")]
SECONDS = float(os.environ.get("BENCH_STORM_SECONDS", "10"))
ENRICH_WAIT_S = float(os.environ.get("BENCH_STORM_ENRICH_WAIT_S", "300"))
CONNECTIONS = 256
# The watcher is Postgres' client too: polled every 25 ms for 4,000 pending ids, it took a third
# of a core of Postgres and of this process at 1,000 webhooks/s, from the stack it measures.
POLL_S = float(os.environ.get("BENCH_STORM_POLL_MS", "50")) / 1000
POLL_WINDOW = int(os.environ.get("BENCH_STORM_POLL_WINDOW", "2000"))  # the oldest pending ids
# Enrichments take seconds to tens of seconds: polled every 50 ms as well, their 2,000 pending ids
# were the costliest statement Postgres ran in a storm (7.7 ms a poll at 1,000 webhooks/s).
ENRICH_POLL_S = float(os.environ.get("BENCH_STORM_ENRICH_POLL_MS", "500")) / 1000
GOAL_RATE, GOAL_P99_S, GOAL_BUDGET = 2000, 1.0, 0.8
IDLE_S = float(os.environ.get("BENCH_STORM_IDLE_S", "3"))
# The path from a webhook to its incident row (the latency the headline measures); the broker
# and Postgres serve it and the enrichment alike.
ROW_PATH = ("ingest", "normalizer", "projector")
LOAD = "load generator"


class StackCpu:
    """CPU seconds so far of each part of the running stack: ``sample()`` reads them all."""

    def __init__(self, env: dict[str, str]) -> None:
        self.broker = broker_pid(env["KAFKA_BOOTSTRAP_SERVERS"])
        self.postgres = postgres_pid(env["DATABASE_URL"])

    def sample(self) -> dict[str, float]:
        out = {LOAD: cpu_seconds(os.getpid())}
        for pid_file in sorted(RUN.glob("*.pid")):
            if pid_file.stem == "supervisor":
                continue
            try:
                out[pid_file.stem] = cpu_seconds(int(pid_file.read_text()))
            except (OSError, ValueError):  # restarting: its time is lost to this sample
                out[pid_file.stem] = 0.0
        out["kafka broker"] = cpu_seconds(self.broker)
        if self.postgres is not None:
            out["postgres"] = process_tree_cpu(self.postgres)
        return out


def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each part used between two samples (a part that restarted: what it used
    since, at least 0)."""
    return {k: max(v - before.get(k, 0.0), 0.0) for k, v in after.items()}


@dataclass
class Step:
    rate: int
    sent: int = 0
    non_2xx: int = 0
    statuses: dict[int, int] = field(default_factory=dict)  # non-2xx by status (0: no answer)
    spooled: int = 0
    acks: list[float] = field(default_factory=list)  # seconds, 2xx only
    acked_at: dict[str, float] = field(default_factory=dict)  # incident id -> wall time of 2xx
    row_at: dict[str, float] = field(default_factory=dict)
    enriched_at: dict[str, float] = field(default_factory=dict)
    failed: int = 0
    send_s: float = 0.0
    budget: dict[str, Any] = field(default_factory=dict)
    limited: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # part -> CPU seconds, idle removed
    cpu_raw: float = 0.0  # every part's CPU seconds, idle use kept
    wall_s: float = 0.0  # first webhook to the last row or enrichment waited for
    give_up_at: float = float("inf")  # stop waiting for rows and enrichments (wall time)

    def row_latency(self) -> list[float]:
        return sorted(self.row_at[k] - self.acked_at[k] for k in self.row_at)

    def last_ack(self) -> float:
        return max(self.acked_at.values(), default=0.0)


def pct(values: list[float], q: float) -> float:
    return values[min(int(len(values) * q), len(values) - 1)] if values else float("nan")


class Poster:
    """A lean keep-alive HTTP/1.1 client: each webhook on a free pooled connection."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname or "", parts.port or 80, parts.path
        self.pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self.opened = 0

    async def _conn(self, fresh: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """A pooled connection (reused: True) or a new one (always when ``fresh``)."""
        if fresh or (self.pool.empty() and self.opened < CONNECTIONS):
            self.opened += 1
            return *await asyncio.open_connection(self.host, self.port), False
        return *await self.pool.get(), True

    async def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """Status and body of one webhook; 0 when the connection failed. A reused connection
        the server closed while idle (uvicorn's keep-alive timeout, between rates) is not an
        answer: the webhook is sent again once on a new connection."""
        head = [f"POST {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head.append(f"Content-Length: {len(body)}")
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        for attempt in range(2):
            reader, writer, reused = await self._conn(fresh=attempt > 0)
            try:
                writer.write(request)
                answer = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in answer.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                payload = await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError, StopIteration):
                writer.close()
                self.opened -= 1
                if reused:
                    continue
                return 0, b""
            self.pool.put_nowait((reader, writer))
            return int(answer[9:12]), payload
        return 0, b""


async def drive(step: Step, poster: Poster, env: dict[str, str], tenant: str, base: int) -> None:
    body0, headers0 = signed_fixture("issue.created")
    secret = env["BLAMETRAIL_DEMO_CLIENT_SECRET"]
    total = int(step.rate * SECONDS)

    async def one(i: int) -> None:
        issue = str(base + i)
        body = body0.replace(b"5912345678", issue.encode())
        headers = {
            **headers0,
            "Request-ID": uuid.uuid4().hex,
            "Sentry-Hook-Signature": sign(body, secret),
        }
        began = time.time()
        status, payload = await poster.post(body, headers)
        done = time.time()
        step.sent += 1
        if not 200 <= status < 300:
            step.non_2xx += 1
            step.statuses[status] = step.statuses.get(status, 0) + 1
            return
        if b'"queued":true' in payload.replace(b" ", b""):
            step.spooled += 1
        step.acks.append(done - began)
        step.acked_at[incident_id_for(tenant, "issue", issue)] = done

    tasks, start = [], time.perf_counter()
    for i in range(total):
        delay = start + i / step.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    step.send_s = time.perf_counter() - start


async def watch(
    step: Step, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event, progress: Any, bars: Any
) -> None:
    """Mark each incident's row and enrichment as they appear (oldest pending first)."""
    rows: OrderedDict[str, None] = OrderedDict()
    rich: OrderedDict[str, None] = OrderedDict()
    known: set[str] = set()
    enrich_polled = 0.0
    while not stop.is_set() or rows or rich:
        for key in step.acked_at.keys() - known:
            known.add(key)
            rows[key] = None
        if rows:
            window = list(rows)[:POLL_WINDOW]
            found = await (
                await conn.execute(
                    "SELECT incident_id::text FROM incidents WHERE incident_id = ANY(%s::uuid[])",
                    (window,),
                )
            ).fetchall()
            now = time.time()
            for (key,) in found:
                rows.pop(key, None)
                step.row_at[key] = now
                rich[key] = None
        if rich and time.monotonic() - enrich_polled >= ENRICH_POLL_S:
            enrich_polled = time.monotonic()
            window = list(rich)[:POLL_WINDOW]
            found = await (
                await conn.execute(
                    "SELECT incident_id::text, status FROM incident_enrichments"
                    " WHERE incident_id = ANY(%s::uuid[])",
                    (window,),
                )
            ).fetchall()
            now = time.time()
            for key, status in found:
                rich.pop(key, None)
                step.enriched_at[key] = now
                step.failed += status != "enriched"
        progress.update(bars[0], completed=len(step.row_at), total=max(len(step.acked_at), 1))
        progress.update(bars[1], completed=len(step.enriched_at), total=max(len(step.acked_at), 1))
        if time.time() > step.give_up_at:
            return
        await asyncio.sleep(POLL_S)


def permitted(budget: dict[str, Any]) -> float:
    """Enrichments/s the stand-in's budget allows: each enrichment spends one request on each
    endpoint (latest event, tags, external issue), each endpoint has its own window and slots."""
    by_rate = float(budget["rate_limit"]) / float(budget["rate_window_s"])
    latency = float(budget.get("latency_s", 0.0))
    by_slots = float(budget["concurrent_limit"]) / latency if latency > 0 else float("inf")
    return min(by_rate, by_slots)


async def stand_in_capacity(stub: str, seconds: float = 3.0) -> float:
    """Calls/s the stand-in itself answers on this machine now (the bare baseline of the
    enrichment rate): 25 callers each on latest event and tags, back to back, no client logic,
    over aiohttp (the enricher's library; httpx's pool, which checks every pooled connection on
    each call, measured a third to a seventh of this: the client's limit, not the stand-in's)."""
    headers = {"Authorization": "Bearer demo-internal-token"}
    paths = [
        "/api/0/organizations/acme/issues/{}/events/latest/",
        "/api/0/organizations/acme/issues/{}/tags/",
    ]
    done, deadline = 0, time.perf_counter() + seconds

    async def caller(session: aiohttp.ClientSession, path: str) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            async with session.get(stub + path.format(done), headers=headers) as resp:
                await resp.read()
                done += resp.status == 200
                if resp.status == 429:
                    await asyncio.sleep(0.05)

    connector = aiohttp.TCPConnector(limit=2 * 25 * len(paths))
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.perf_counter()
        await asyncio.gather(*(caller(session, p) for p in paths for _ in range(25)))
        return done / (time.perf_counter() - began)


async def counts(conn: psycopg.AsyncConnection[Any], ids: list[str]) -> tuple[int, int, int]:
    """Incident rows, timeline events and enrichment rows of ``ids``."""
    out = []
    for sql in (
        "SELECT count(*) FROM incidents WHERE incident_id = ANY(%s::uuid[])",
        "SELECT count(*) FROM incident_timeline WHERE incident_id = ANY(%s::uuid[])",
        "SELECT count(*) FROM incident_enrichments WHERE incident_id = ANY(%s::uuid[])",
    ):
        row = await (await conn.execute(sql, (ids,))).fetchone()
        out.append(int(row[0]) if row else 0)
    return out[0], out[1], out[2]


async def main() -> None:
    env = read_env(ENV)
    if "BLAMETRAIL_DEMO_WEBHOOK_URL" not in env:
        raise SystemExit("run `make up` first (bench/storm drives the running services)")
    os.environ.setdefault("DATABASE_URL", env["DATABASE_URL"])
    tenant = demo_org_id()
    path = urlsplit(env["BLAMETRAIL_DEMO_WEBHOOK_URL"]).path
    poster = Poster(env["BLAMETRAIL_INGEST_URL"].rstrip("/") + path)
    stub = env["BLAMETRAIL_SENTRY_STUB_URL"].rstrip("/")
    console, steps = Console(width=max(Console().width, 180)), []
    # Issue ids of this run: its start second, then 10,000,000 a step. (The start second times
    # 100,000 had runs 100 s apart post the same issues: a run's first step repeated an earlier
    # run's fourth, and counted every one as duplicated.)
    base = int(time.time()) * 1_000_000_000
    async with (
        await psycopg.AsyncConnection.connect(env["DATABASE_URL"], autocommit=True) as conn,
        httpx.AsyncClient(timeout=10) as http,
    ):
        with console.status("the stand-in's own capacity (bare calls)"):
            capacity = await stand_in_capacity(stub)
        stack = StackCpu(env)
        with console.status(f"the idle stack's CPU ({IDLE_S:.0f} s)"):
            began, at = time.perf_counter(), stack.sample()
            await asyncio.sleep(IDLE_S)
            idle = {
                k: v / (time.perf_counter() - began) for k, v in spent(at, stack.sample()).items()
            }
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            for n, rate in enumerate(RATES):
                step = Step(rate)
                before = (await http.get(f"{stub}/_stub/budget")).json()
                sending = progress.add_task(f"{rate:>5}/s: webhooks sent", total=rate * SECONDS)
                bars = (
                    progress.add_task(f"{rate:>5}/s: incident rows", total=1),
                    progress.add_task(f"{rate:>5}/s: enrichments", total=1),
                )
                stop = asyncio.Event()
                watcher = asyncio.create_task(watch(step, conn, stop, progress, bars))

                async def tick(step: Step = step, task: Any = sending) -> None:
                    while True:
                        progress.update(task, completed=step.sent)
                        await asyncio.sleep(0.2)

                ticker = asyncio.create_task(tick())
                began, at = time.perf_counter(), stack.sample()
                await drive(step, poster, env, tenant, base + n * 10_000_000)
                ticker.cancel()
                progress.update(sending, completed=step.sent)
                step.give_up_at = time.time() + ENRICH_WAIT_S
                stop.set()
                await watcher
                step.wall_s = time.perf_counter() - began
                used = spent(at, stack.sample())
                step.cpu_raw = sum(used.values())
                step.cpu = {
                    k: max(v - idle.get(k, 0.0) * step.wall_s, 0.0) for k, v in used.items()
                }
                after = (await http.get(f"{stub}/_stub/budget")).json()
                step.budget = after
                step.limited = {
                    k: v - before["limited"].get(k, 0) for k, v in after["limited"].items()
                }
                steps.append(step)
        ids = [k for s in steps for k in s.acked_at]
        rows, timeline, enrichments = await counts(conn, ids)
    report(console, steps, rows, timeline, enrichments, capacity)
    report_cpu(console, steps, idle)


def report(
    console: Console, steps: list[Step], rows: int, timeline: int, enriched: int, capacity: float
) -> None:
    table = Table(
        "rate/s",
        "sent",
        "non-2xx",
        "spooled",
        "ack p50/p99 ms",
        "2xx->row p50/p99 ms",
        "last row after last ack",
        "last enrichment after last ack",
        "enrichments/s (failed)",
        "budget permits/s",
        "stand-in 429s",
        title=f"bench/storm: {SECONDS:.0f} s per rate, new issues, through the make up stack",
    )
    best, ratios = 0, []
    for s in steps:
        acks, lat = sorted(s.acks), s.row_latency()
        last_ack = s.last_ack()
        last_row = max(s.row_at.values(), default=float("nan")) - last_ack
        done = sorted(s.enriched_at.values())
        last_rich = (done[-1] - last_ack) if done else float("nan")
        span = (done[-1] - done[0]) if len(done) > 1 else float("nan")
        rate = (len(done) - 1) / span if span and span == span and span > 0 else float("nan")
        allowed = permitted(s.budget) if s.budget else float("nan")
        complete = len(s.row_at) == len(s.acked_at) and s.non_2xx == 0
        if complete and lat and pct(lat, 0.99) <= GOAL_P99_S:
            best = max(best, s.rate)
        if rate == rate and len(done) >= 100:
            ratios.append(rate / allowed)
        table.add_row(
            f"{s.rate:,}" + ("" if s.send_s <= SECONDS * 1.1 else f" (sent in {s.send_s:.0f} s)"),
            f"{s.sent:,}",
            f"{s.non_2xx:,}"
            + (" (" + ", ".join(f"{k or 'none'}: {v}" for k, v in s.statuses.items()) + ")")
            * bool(s.statuses),
            f"{s.spooled:,}",
            f"{pct(acks, 0.5) * 1000:.0f} / {pct(acks, 0.99) * 1000:.0f}",
            f"{pct(lat, 0.5) * 1000:.0f} / {pct(lat, 0.99) * 1000:.0f}",
            f"{last_row:.1f} s"
            + ("" if complete else f" ({len(s.acked_at) - len(s.row_at)} missing)"),
            f"{last_rich:.1f} s"
            + ("" if len(done) == len(s.acked_at) else f" ({len(s.acked_at) - len(done)} missing)"),
            f"{rate:,.0f} ({s.failed})",
            f"{allowed:,.0f}",
            ", ".join(f"{k} {v}" for k, v in s.limited.items() if v) or "0",
        )
    console.print(table)
    incidents = sum(len(s.acked_at) for s in steps)
    lost, duplicated = incidents - rows, max(timeline - rows, 0) + max(enriched - rows, 0)
    best_ratio = max(ratios, default=float("nan"))
    summary = Table("measure", "value", "goal", title="bench/storm: outcome")
    summary.add_row("highest rate with p99 2xx -> incident row <= 1 s", f"{best:,}/s", ">= 2,000/s")
    summary.add_row(
        "enrichments/s over what the budget permits (best step)", f"{best_ratio:.2f}x", ">= 0.8x"
    )
    summary.add_row(
        "the stand-in's own capacity, bare calls/s (3 calls per enrichment)",
        f"{capacity:,.0f} (= {capacity / 3:,.0f} enrichments/s)",
        "",
    )
    summary.add_row("acknowledged webhooks", f"{incidents:,}", "")
    summary.add_row("lost (acked, no incident row; Postgres)", f"{lost:,}", "0")
    summary.add_row(
        "duplicated (timeline events / enrichments beyond one; Postgres)", f"{duplicated:,}", "0"
    )
    console.print(summary)
    write_result(
        BenchResult(
            name="storm",
            headline="highest rate, p99 2xx->incident row <= 1 s",
            value=float(best),
            baseline_label="highest rate offered",
            baseline=float(max(s.rate for s in steps)) if steps else None,
            goal=">= 2,000/s; enrichments >= 0.8x budget; lost 0, duplicated 0",
            ok=best >= GOAL_RATE and best_ratio >= GOAL_BUDGET and lost == 0 and duplicated == 0,
            unit="/s",
            notes=(
                f"enrichments {best_ratio:.2f}x budget (stand-in serves {capacity / 3:,.0f}"
                f" enrichments/s bare); lost {lost}; duplicated {duplicated}"
            ),
        )
    )


def report_cpu(console: Console, steps: list[Step], idle: dict[str, float]) -> None:
    """Per rate, each part's CPU per acknowledged webhook, and the cores the stack needs at the
    goal's rate if each webhook costs what it cost in that step."""
    parts = sorted(
        {k for s in steps for k in s.cpu}, key=lambda k: -sum(s.cpu.get(k, 0) for s in steps)
    )
    table = Table(
        "part (idle cores)",
        *(f"{s.rate:,}/s" for s in steps),
        title="bench/storm: CPU µs per acknowledged webhook, first webhook to last enrichment,"
        " idle use removed",
    )

    def per(s: Step, keys: Sequence[str]) -> float:
        return 1e6 * sum(s.cpu.get(k, 0.0) for k in keys) / max(len(s.acked_at), 1)

    for part in parts:
        table.add_row(
            f"{part} ({idle.get(part, 0.0):.2f})", *(f"{per(s, [part]):,.0f}" for s in steps)
        )
    table.add_row("row path: " + " + ".join(ROW_PATH), *(f"{per(s, ROW_PATH):,.0f}" for s in steps))
    table.add_row("all", *(f"{per(s, parts):,.0f}" for s in steps))
    table.add_row(
        "all, idle use kept",
        *(f"{1e6 * s.cpu_raw / max(len(s.acked_at), 1):,.0f}" for s in steps),
    )
    table.add_row(
        "cores used (all, idle use kept, over the step's wall time)",
        *(f"{s.cpu_raw / s.wall_s:.2f}" if s.wall_s else "-" for s in steps),
    )
    table.add_row(
        f"cores {GOAL_RATE:,}/s would need at this cost",
        *(f"{per(s, parts) * GOAL_RATE / 1e6:.1f}" for s in steps),
    )
    console.print(table)
    console.print(
        f"This machine has {os.cpu_count()} cores for all of it. Idle use (cores) is measured for"
        f" {IDLE_S:.0f} s before the first step and removed from each step's share (at most all"
        " of it: a part whose work under load is less than its idle polling shows 0, as the"
        " broker at high rates, where its requests carry many records each)."
    )


if __name__ == "__main__":
    asyncio.run(main())
