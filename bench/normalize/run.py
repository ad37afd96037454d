"""bench/normalize: CPU per webhook of the normalizer, and of the broker, under a steady stream.

Each phase has a topic prefix of its own on the environment's broker (KAFKA_BOOTSTRAP_SERVERS, else
one started for the run) and a process of its own, whose CPU is read from ``/proc``:

- bare: ``bare.py``, an aiokafka consumer group member that produces one record per raw webhook
  (offsets committed after the acks), no decoding, no processing;
- normalizer: ``python -m blametrail_normalizer`` as ``make up`` runs it, against a mapped
  project, so every webhook (a new Sentry issue) becomes one ``incident.opened``.

Both get the same records, as ingest publishes them (signed ``issue.created`` bodies wrapped in
``sentry.webhook.received``, keyed by issue id, handed over in small batches every 5 ms) at a
fixed rate, after an unmeasured warm-up; a phase ends when every output arrived. Reported per
phase: the process's CPU µs per webhook, the broker's (the broker is shared with other work:
its CPU over an idle window of the same process just before is subtracted, and the raw figure
shown too), and webhook -> output latency p50/p99. ``--rate`` / ``BENCH_NORMALIZE_RATE``
(default 800/s) and ``--seconds`` / ``BENCH_NORMALIZE_SECONDS`` (default 10) change the load;
``--before REV`` runs both phases first on that revision's normalizer and common library
(``git archive``, on ``PYTHONPATH``), so before and after come from one run; ``--own-broker``
starts a broker for the run, whose CPU is then the run's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from blametrail_common.events import (
    ConnectionStateV1,
    MappingStateV1,
    ServiceStateV1,
    WebhookReceivedV1,
    body_sha256,
    encode,
    mapping_key,
    new_event,
)
from blametrail_common.events.incidents import incident_id_for
from blametrail_common.kafka import EventProducer, create_consumer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.settings import KafkaSettings
from blametrail_common.testing import signed_fixture
from blametrail_devstack.bench import BenchResult, broker_pid, cpu_seconds, write_result
from blametrail_devstack.kafka import KafkaNode
from blametrail_devstack.pytest_plugin import open_infra
from blametrail_devstack.stack import free_port
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

HERE = Path(__file__).parent
CONN, TENANT, SLUG = "conn-bench", "tenant-bench", "checkout-api"
HEADERS = [("bt-type", b"sentry.webhook.received"), ("bt-version", b"1")]
TICK_S, WARMUP, IDLE_S = 0.005, 300, 2.0


def webhooks(n: int, base: int) -> list[tuple[bytes, bytes]]:
    """``n`` raw webhooks, each a new issue, encoded as ingest publishes them."""
    body0 = signed_fixture("issue.created")[0]
    out = []
    for i in range(n):
        issue = str(base + i)
        body = body0.replace(b"5912345678", issue.encode())
        raw = WebhookReceivedV1(
            connection_id=CONN,
            resource="issue",
            action="created",
            installation_uuid=None,
            signature_header="Sentry-Hook-Signature",
            request_id=uuid.uuid4().hex,
            hook_timestamp=str(int(time.time())),
            received_at=datetime.now(UTC),
            body_sha256=body_sha256(body),
            body=body.decode(),
        )
        out.append((issue.encode(), encode(new_event(raw, key=issue))))
    return out


async def seed(producer: EventProducer) -> None:
    now = datetime.now(UTC)
    conn = ConnectionStateV1(
        connection_id=CONN,
        tenant_id=TENANT,
        mode="internal",
        enabled=True,
        sentry_org_slug="acme",
        api_base_url="https://sentry.io",
        client_secrets_enc=[],
        updated_at=now,
    )
    svc = ServiceStateV1(service_id="svc", tenant_id=TENANT, slug="svc", name="svc", updated_at=now)
    mapping = MappingStateV1(
        mapping_id="m",
        tenant_id=TENANT,
        connection_id=CONN,
        sentry_project_slug=SLUG,
        service_id="svc",
        active=True,
        updated_at=now,
    )
    await producer.send("cp-connections", new_event(conn, key=CONN))
    await producer.send("cp-services", new_event(svc, key="svc"))
    await producer.send("cp-mappings", new_event(mapping, key=mapping_key(CONN, SLUG)))


@dataclass
class Phase:
    name: str
    webhooks: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    broker_s: float = 0.0
    broker_idle_s: float = 0.0  # the broker's CPU over the same time, idle (other work's share)
    latencies: list[float] | None = None

    def us_per(self, seconds: float) -> float:
        return 1e6 * seconds / self.webhooks

    @property
    def broker_net_s(self) -> float:
        return max(self.broker_s - self.broker_idle_s, 0.0)

    def pct(self, q: float) -> float:
        lat = sorted(self.latencies or [0.0])
        return 1000 * lat[min(int(len(lat) * q), len(lat) - 1)]


class Rig:
    """One phase's feeder and watcher, on its own topic prefix."""

    def __init__(self, kafka: KafkaSettings, out_key: Callable[[bytes], bytes]) -> None:
        self.kafka, self.out_key = kafka, out_key
        self.producer = EventProducer(create_producer(kafka, linger_ms=0), kafka)
        # The watcher answers at once whatever the environment's fetch settings: it measures.
        self.consumer = create_consumer(
            kafka, ["incident-events"], group_id=None, fetch_min_bytes=1, fetch_max_wait_ms=100
        )
        self.sent_at: dict[bytes, float] = {}
        self.seen_at: dict[bytes, float] = {}
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await ensure_topics(self.kafka)
        await self.producer.start()
        await self.consumer.start()
        self._watch = asyncio.create_task(self._watching())

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        await self.consumer.stop()
        await self.producer.stop()

    async def _watching(self) -> None:
        while True:
            for records in (await self.consumer.getmany(timeout_ms=200)).values():
                now = time.perf_counter()
                for r in records:
                    if r.key is not None:
                        self.seen_at.setdefault(r.key, now)

    async def feed(self, records: list[tuple[bytes, bytes]], rate: float) -> None:
        """At ``rate`` records/s, handed over every TICK_S as ingest's group commit does."""
        futures: list[asyncio.Future[Any]] = []
        start, sent = time.perf_counter(), 0
        while sent < len(records):
            due = min(len(records), int((time.perf_counter() - start) * rate) + 1)
            if due > sent:
                batch = records[sent:due]
                now = time.perf_counter()
                for key, _ in batch:
                    self.sent_at[self.out_key(key)] = now
                futures += await self.producer.enqueue_raw("sentry-webhooks-raw", batch, HEADERS)
                sent = due
            await asyncio.sleep(TICK_S)
        await asyncio.gather(*futures)

    async def arrived(
        self, records: list[tuple[bytes, bytes]], progress: Progress, task: Any
    ) -> None:
        keys = [self.out_key(k) for k, _ in records]
        while (done := sum(k in self.seen_at for k in keys)) < len(keys):
            progress.update(task, completed=done)
            await asyncio.sleep(0.05)
        progress.update(task, completed=len(keys))


async def run_phase(
    name: str,
    kafka: KafkaSettings,
    proc_for: Callable[[], tuple[subprocess.Popen[bytes], Callable[[], bool]]],
    out_key: Callable[[bytes], bytes],
    n: int,
    rate: float,
    broker: int,
    progress: Progress,
) -> Phase:
    rig = Rig(kafka, out_key)
    await rig.start()
    await seed(rig.producer)
    warm, main = webhooks(WARMUP, 900_000_000), webhooks(n, 910_000_000)
    proc, ready = proc_for()
    phase = Phase(name, webhooks=n)
    try:
        task = progress.add_task(f"{name}: start", total=None)
        while not ready():
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with {proc.returncode}")
            await asyncio.sleep(0.1)
        progress.update(task, description=f"{name}: warm-up", total=WARMUP)
        await rig.feed(warm, rate)
        await rig.arrived(warm, progress, task)
        progress.update(task, description=f"{name}: broker idle {IDLE_S:.0f} s", total=None)
        b0, t0 = cpu_seconds(broker), time.perf_counter()
        await asyncio.sleep(IDLE_S)
        idle_rate = (cpu_seconds(broker) - b0) / (time.perf_counter() - t0)
        progress.update(task, description=f"{name}: {rate:.0f}/s", total=n, completed=0)
        c0, b0, t0 = cpu_seconds(proc.pid), cpu_seconds(broker), time.perf_counter()
        feeding = asyncio.create_task(rig.feed(main, rate))
        await rig.arrived(main, progress, task)
        await feeding
        phase.seconds = time.perf_counter() - t0
        phase.cpu_s = cpu_seconds(proc.pid) - c0
        phase.broker_s = cpu_seconds(broker) - b0
        phase.broker_idle_s = idle_rate * phase.seconds
        keys = [out_key(k) for k, _ in main]
        phase.latencies = [rig.seen_at[k] - rig.sent_at[k] for k in keys]
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        await rig.stop()
    return phase


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *args],
            env=env,
            cwd=log.parent,
            stdout=subprocess.PIPE if args[0].endswith("bare.py") else out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )


def _env(kafka: KafkaSettings, code: Path | None, extra: dict[str, str]) -> dict[str, str]:
    """The environment of a phase's process; ``code``: a checkout whose packages it imports."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "BLAMETRAIL_TOPIC_PREFIX": kafka.topic_prefix,
        "BLAMETRAIL_LOG_LEVEL": "WARNING",
        **extra,
    }
    if code is not None:
        env["PYTHONPATH"] = f"{code}/services/normalizer/src:{code}/libs/common/src"
    return env


Ready = Callable[[], bool]


def bare_proc(
    kafka: KafkaSettings, log: Path, code: Path | None
) -> tuple[subprocess.Popen[bytes], Ready]:
    proc = _spawn([str(HERE / "bare.py")], _env(kafka, code, {}), log)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    said = bytearray()

    def ready() -> bool:
        assert proc.stdout is not None
        said.extend(proc.stdout.read() or b"")
        return b"ready" in said

    return proc, ready


def normalizer_proc(
    kafka: KafkaSettings, log: Path, code: Path | None
) -> tuple[subprocess.Popen[bytes], Ready]:
    port = free_port()
    env = _env(
        kafka,
        code,
        {
            "BLAMETRAIL_NORMALIZER_APP_ID": f"bench-normalize-{uuid.uuid4().hex[:6]}",
            "BLAMETRAIL_NORMALIZER_PORT": str(port),
            "BLAMETRAIL_NORMALIZER_DATA_DIR": str(log.parent / "faust"),
        },
    )
    proc = _spawn(["-m", "blametrail_normalizer"], env, log)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as res:
                return bool(res.status == 200)
        except Exception:
            return False

    return proc, ready


def checkout(rev: str, into: Path) -> Path:
    """The packages the phases import, as of ``rev`` (``git archive``), under ``into``."""
    paths = ["services/normalizer/src", "libs/common/src"]
    root = HERE.parent.parent
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", rev, *paths], check=True, capture_output=True
    ).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _incident_key(key: bytes) -> bytes:
    return incident_id_for(TENANT, "issue", key.decode()).encode()


async def bench(
    bootstrap: str,
    rate: float,
    seconds: float,
    names: list[str],
    before: str | None,
    console: Console,
) -> list[Phase]:
    broker = broker_pid(bootstrap)
    n = int(rate * seconds)
    workdir = Path(tempfile.mkdtemp(prefix="bench-normalize-"))
    old = checkout(before, workdir / "before") if before else None
    runs: list[tuple[str, str, Path | None]] = [
        *((f"{name}@{before[:8]}", name, old) for name in names if old is not None),
        *((name, name, None) for name in names),
    ]
    phases: list[Phase] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console) as progress:
        for label, name, code in runs:
            prefix = f"bn{os.getpid()}{len(phases)}{uuid.uuid4().hex[:4]}."
            kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix)
            log = workdir / f"{label}.log"
            spawn = bare_proc if name == "bare" else normalizer_proc
            out_key = (lambda key: key) if name == "bare" else _incident_key
            phase = await run_phase(
                label,
                kafka,
                lambda spawn=spawn, k=kafka, lg=log, c=code: spawn(k, lg, c),  # type: ignore[misc]
                out_key,
                n,
                rate,
                broker,
                progress,
            )
            phases.append(phase)
    traces = {p.name: p.latencies for p in phases}
    (workdir / "latencies.json").write_text(json.dumps(traces))
    console.print(f"logs and latencies (s, in send order): {workdir}")
    return phases


def report(phases: list[Phase], rate: float, console: Console) -> None:
    n = phases[-1].webhooks
    load = os.getloadavg()[0]
    table = Table(
        "per webhook",
        *(p.name for p in phases),
        title=f"bench/normalize: {n:,} new issues at {rate:.0f}/s (load {load:.1f})",
    )
    rows: list[tuple[str, Callable[[Phase], str]]] = [
        ("process CPU, µs", lambda p: f"{p.us_per(p.cpu_s):,.0f}"),
        ("broker CPU, µs (idle share subtracted)", lambda p: f"{p.us_per(p.broker_net_s):,.0f}"),
        ("broker CPU, µs (raw)", lambda p: f"{p.us_per(p.broker_s):,.0f}"),
        ("webhook -> output p50, ms", lambda p: f"{p.pct(0.5):.1f}"),
        ("webhook -> output p99, ms", lambda p: f"{p.pct(0.99):.1f}"),
        ("wall, s", lambda p: f"{p.seconds:.1f}"),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(p) for p in phases))
    console.print(table)
    by_name = {p.name: p for p in phases}
    norm, bare = by_name.get("normalizer"), by_name.get("bare")
    if norm is None or bare is None:
        return
    write_result(
        BenchResult(
            name="normalize",
            headline="normalizer CPU per webhook",
            value=norm.us_per(norm.cpu_s),
            baseline_label="bare consume+produce",
            baseline=bare.us_per(bare.cpu_s),
            goal="",
            ok=None,
            unit="µs",
            notes=(
                f"broker {norm.us_per(norm.broker_net_s):.0f} µs/webhook"
                f" (bare {bare.us_per(bare.broker_net_s):.0f}); p99 {norm.pct(0.99):.0f} ms"
                f" at {rate:.0f}/s"
            ),
        )
    )


@contextlib.contextmanager
def _broker(own: bool) -> Iterator[str]:
    if not own:
        with open_infra(os.environ) as infra:
            yield infra.bootstrap
        return
    home = Path(tempfile.mkdtemp(prefix="bench-normalize-kafka-"))
    port = free_port()
    while not _free(port + 1):
        port = free_port()
    node = KafkaNode(home, port, port + 1)
    node.start()
    try:
        yield node.bootstrap
    finally:
        node.stop()
        shutil.rmtree(home, ignore_errors=True)


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rate", type=float, default=float(os.environ.get("BENCH_NORMALIZE_RATE", "800"))
    )
    parser.add_argument(
        "--seconds", type=float, default=float(os.environ.get("BENCH_NORMALIZE_SECONDS", "10"))
    )
    parser.add_argument(
        "--phases",
        type=lambda v: v.split(","),
        default=["bare", "normalizer"],
        help="which phases to run, comma-separated (default: bare,normalizer)",
    )
    parser.add_argument(
        "--before",
        metavar="REV",
        help="also run each phase on the code of this git revision first, in the same run",
    )
    parser.add_argument(
        "--own-broker",
        action="store_true",
        help="a broker of the run's own (its CPU is then the run's alone), not the environment's",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the run's broker too
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # a new topic's first leader moves
    console = Console()
    with _broker(args.own_broker) as bootstrap:
        phases = asyncio.run(
            bench(bootstrap, args.rate, args.seconds, args.phases, args.before, console)
        )
    report(phases, args.rate, console)


if __name__ == "__main__":
    main()
