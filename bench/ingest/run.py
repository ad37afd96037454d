"""bench/ingest: verified-and-acknowledged webhooks/s of the real ingest vs a bare endpoint.

Both run under the same uvicorn settings (uvloop, httptools, one worker) in their own process;
the load generator is a lean keep-alive HTTP/1.1 client on loopback. Reported: closed-loop
throughput at 64 connections (median of 3 rounds) and its ratio to the bare endpoint (reported,
no longer a goal: issue 19), and the latency distribution of an open-loop run at a fixed 200
webhooks/s, and the CPU each server (and the broker, which shares the machine's cores) spends per
1,000 requests. Ingest's 200s are split: acknowledged by Kafka (``"queued": false``) and spooled
(``"queued": true``, written to the spool because Kafka did not ack in time); only the first
count as webhooks/s, and spooled ones are a finding (the spool is for outages). The broker
measured is the process listening on the bootstrap port the run uses (the one started for the
run, or the environment's), never the first Kafka process found. Infrastructure: the
environment's KAFKA_BOOTSTRAP_SERVERS if set, else a local broker started for the run.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.settings import KafkaSettings
from blametrail_common.testing import TEST_SECRET, signed_fixture
from blametrail_devstack.bench import BenchResult, broker_pid, cpu_seconds, write_result
from blametrail_devstack.pytest_plugin import open_infra
from blametrail_devstack.stack import free_port
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).parent
BODY, HEADERS = signed_fixture("issue.created")
CONNECTIONS, ROUND_S, ROUNDS, RATE = 64, 5.0, 3, 200


def _request(port: int) -> bytes:
    lines = [
        "POST /webhooks/sentry HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Content-Length: {len(BODY)}",
    ]
    lines += [f"{k}: {v}" for k, v in HEADERS.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + BODY


SPOOLED = -200  # a 200 whose body says ``"queued": true``


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """The answer's status; :data:`SPOOLED` for a 200 that was spooled, not acknowledged."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    body = await reader.readexactly(length)
    return SPOOLED if status == 200 and b'"queued":true' in body.replace(b" ", b"") else status


async def closed_loop(port: int, seconds: float) -> tuple[int, int, int]:
    """Requests answered 200 and acknowledged, 200 and spooled, and otherwise, by CONNECTIONS
    connections sending back to back."""
    request, ok, spooled, bad = _request(port), 0, 0, 0
    deadline = time.perf_counter() + seconds

    async def conn() -> None:
        nonlocal ok, spooled, bad
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < deadline:
            status = await _exchange(reader, writer, request)
            if status == 200:
                ok += 1
            elif status == SPOOLED:
                spooled += 1
            else:
                bad += 1
        writer.close()

    await asyncio.gather(*(conn() for _ in range(CONNECTIONS)))
    return ok, spooled, bad


async def open_loop(port: int, rate: int, seconds: float) -> tuple[list[float], int]:
    """Latencies (s) of requests started at a fixed rate, each on a pooled keep-alive connection,
    and how many of them were spooled."""
    request, latencies, spooled = _request(port), [], 0
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(32):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))

    async def one() -> None:
        nonlocal spooled
        began = time.perf_counter()
        reader, writer = await pool.get()
        status = await _exchange(reader, writer, request)
        assert status in (200, SPOOLED), status
        spooled += status == SPOOLED
        latencies.append(time.perf_counter() - began)
        pool.put_nowait((reader, writer))

    tasks, start = [], time.perf_counter()
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return latencies, spooled


def _serve(app: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env={**os.environ, **env},
        cwd=HERE,
    )
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except Exception:
            try:
                urllib.request.urlopen(
                    urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/sentry"), timeout=1
                )
            except urllib.error.HTTPError:
                return proc  # the bare app has no /healthz; a 405 means it is up
            except Exception:
                time.sleep(0.1)
    raise RuntimeError(f"{app} did not start")


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds used so far by ``pid`` (0 when unknown)."""
    return 0.0 if pid is None else cpu_seconds(pid)


def _rounds(port: int, server_pid: int, broker: int) -> tuple[float, float, float, float, int]:
    """Median acknowledged req/s, CPU ms per 1,000 requests of the server, the broker and the
    load generator (this process), and the 200s that were spooled, after one unmeasured warm-up
    round (the broker's JIT, caches)."""
    rates, server_cpu, broker_cpu, client_cpu, total, spooled = [], 0.0, 0.0, 0.0, 0, 0
    asyncio.run(closed_loop(port, ROUND_S))
    for _ in range(ROUNDS):
        s0, b0, c0 = _cpu_s(server_pid), _cpu_s(broker), time.process_time()
        ok, queued, bad = asyncio.run(closed_loop(port, ROUND_S))
        server_cpu += _cpu_s(server_pid) - s0
        broker_cpu += _cpu_s(broker) - b0
        client_cpu += time.process_time() - c0
        assert bad == 0, f"{bad} requests failed"
        rates.append(ok / ROUND_S)
        total += ok + queued
        spooled += queued
    per_1000 = [1e6 * cpu / total for cpu in (server_cpu, broker_cpu, client_cpu)]
    return statistics.median(rates), per_1000[0], per_1000[1], per_1000[2], spooled


def main() -> None:
    console = Console()
    with open_infra(os.environ) as infra:
        kafka = KafkaSettings(
            bootstrap_servers=infra.bootstrap, topic_prefix=f"bench{os.getpid()}."
        )
        asyncio.run(ensure_topics(kafka))
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap,
            "BLAMETRAIL_TOPIC_PREFIX": kafka.topic_prefix,
            "BLAMETRAIL_INGEST_PUBLIC_CLIENT_SECRETS": TEST_SECRET,
            "BLAMETRAIL_LOG_LEVEL": "WARNING",
            "BLAMETRAIL_INGEST_SPOOL_DIR": str(HERE / ".spool"),
        }
        broker = broker_pid(infra.bootstrap)
        bare_port, ingest_port = free_port(), free_port()
        bare = _serve("bare:app", bare_port, env)
        ingest = _serve("ingest_app:app", ingest_port, env)
        try:
            with console.status("bare endpoint, closed loop"):
                bare_rate, bare_cpu, _, bare_client, _ = _rounds(bare_port, bare.pid, broker)
            with console.status("ingest, closed loop"):
                ingest_rate, ingest_cpu, broker_cpu, ingest_client, spooled = _rounds(
                    ingest_port, ingest.pid, broker
                )
            with console.status(f"ingest, open loop at {RATE}/s"):
                lat, open_spooled = asyncio.run(open_loop(ingest_port, RATE, 10.0))
                lat.sort()
        finally:
            for proc in (bare, ingest):
                proc.terminate()
                proc.wait(30)
    p50, p99 = lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
    table = Table(
        "measure",
        "value",
        "goal",
        title="bench/ingest (median of 3 rounds after a warm-up, 64 connections)",
    )
    table.add_row("bare endpoint, req/s", f"{bare_rate:,.0f}", "")
    table.add_row("ingest verified+acked, webhooks/s", f"{ingest_rate:,.0f}", ">= 1,000")
    table.add_row("ratio ingest / bare (reported)", f"{ingest_rate / bare_rate:.2f}", "")
    table.add_row("200s spooled, not acked by Kafka (closed loop, all rounds)", f"{spooled:,}", "0")
    table.add_row("CPU ms per 1,000: bare server", f"{bare_cpu:,.0f}", "")
    table.add_row("CPU ms per 1,000: ingest server", f"{ingest_cpu:,.0f}", "")
    table.add_row("CPU ms per 1,000: Kafka broker (same 2 cores)", f"{broker_cpu:,.0f}", "")
    table.add_row(
        "CPU ms per 1,000: load generator, bare / ingest",
        f"{bare_client:,.0f} / {ingest_client:,.0f}",
        "",
    )
    table.add_row(f"p50 at {RATE}/s", f"{p50:.1f} ms", "")
    table.add_row(f"p99 at {RATE}/s", f"{p99:.1f} ms", "<= 50 ms")
    table.add_row(f"spooled at {RATE}/s", f"{open_spooled:,}", "0")
    console.print(table)
    write_result(
        BenchResult(
            name="ingest",
            headline="verified+acked webhooks/s",
            value=ingest_rate,
            baseline_label="bare endpoint",
            baseline=bare_rate,
            goal=">= 1,000/s, 0 spooled",
            ok=ingest_rate >= 1000 and spooled == 0 and open_spooled == 0,
            unit="/s",
            notes=(
                f"ingest CPU {ingest_cpu:.0f} ms per 1,000 (bare {bare_cpu:.0f});"
                f" spooled {spooled} closed loop, {open_spooled} at {RATE}/s; p99 {p99:.1f} ms"
            ),
        )
    )


if __name__ == "__main__":
    main()
