"""The fault suite's stack (tests/faults): the services as `make up` runs them, under one
supervisor, on a Kafka broker and a Postgres of their own (the suite kills both), with the Sentry
stand-in; everything under ``.local/faults/<tag>``. Development only.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from blametrail_common.crypto import generate_key
from blametrail_common.db import migrate
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.settings import KafkaSettings

from blametrail_devstack.kafka import KafkaNode
from blametrail_devstack.paths import local_dir
from blametrail_devstack.postgres import PgCluster
from blametrail_devstack.services import ServiceSpec, service_pid, start_all, stop_all
from blametrail_devstack.stack import free_port

__all__ = ["CLIENT_SECRET", "Stack", "running_stack"]

CLIENT_SECRET = "faults-client-secret"  # noqa: S105 - a throwaway secret of the test stack
STUB_TOKEN = "faults-internal-token"  # noqa: S105

# name, module, the variable naming its HTTP port
CORE = (
    ("sentry-stub", "blametrail_sentry_stub", "BLAMETRAIL_SENTRY_STUB_PORT"),
    ("mappings-api", "blametrail_mappings_api", "BLAMETRAIL_API_PORT"),
    ("ingest", "blametrail_ingest", "BLAMETRAIL_INGEST_PORT"),
    ("normalizer", "blametrail_normalizer", "BLAMETRAIL_NORMALIZER_PORT"),
    ("enricher", "blametrail_enricher", "BLAMETRAIL_ENRICHER_PORT"),
    ("projector", "blametrail_projector", "BLAMETRAIL_PROJECTION_PORT"),
    ("suspects", "blametrail_suspects", "BLAMETRAIL_SUSPECTS_PORT"),
    ("sync", "blametrail_sync", "BLAMETRAIL_SYNC_PORT"),
    ("reconciler", "blametrail_reconciler", "BLAMETRAIL_RECONCILER_PORT"),
)


@dataclass
class Stack:
    home: Path
    kafka: KafkaNode
    pg: PgCluster
    env: dict[str, str]
    specs: tuple[ServiceSpec, ...]
    run: Path
    ports: dict[str, int] = field(default_factory=dict)
    api_key: str = ""
    tenant: str = ""
    connection_id: str = ""
    service_id: str = ""

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def dsn(self) -> str:
        return self.env["DATABASE_URL"]

    @property
    def webhook_url(self) -> str:
        return f"{self.url('ingest')}/webhooks/sentry/{self.connection_id}"

    def pid(self, name: str, where: Path | None = None) -> int:
        pid = service_pid(name, where or self.run)
        assert pid is not None, f"{name} is not running"
        return pid

    def kill(self, name: str, where: Path | None = None) -> int:
        pid = self.pid(name, where)
        os.kill(pid, signal.SIGKILL)
        return pid

    def ready(self, name: str) -> tuple[int, dict[str, Any]]:
        try:
            resp = httpx.get(f"{self.url(name)}/readyz", timeout=2)
        except httpx.HTTPError as exc:
            return 0, {"error": type(exc).__name__}
        return resp.status_code, resp.json()

    async def wait_ready(self, names: list[str] | None = None, timeout_s: float = 90) -> float:
        """Seconds until every named service (all with a port) answers /readyz 200."""
        began = time.monotonic()
        pending = set(names or [s.name for s in self.specs if s.port is not None])
        while pending:
            pending = {n for n in pending if self.ready(n)[0] != 200}
            if not pending:
                break
            if time.monotonic() - began > timeout_s:
                raise AssertionError(
                    f"not ready after {timeout_s}s: {sorted(pending)}; logs in {self.run}"
                )
            await asyncio.sleep(0.25)
        return time.monotonic() - began

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url("mappings-api"),
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=10,
        )

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, connect_timeout=3) as conn:
            return list(conn.execute(sql.encode(), params).fetchall())


def _specs(ports: dict[str, int], spool: Path) -> tuple[ServiceSpec, ...]:
    specs = []
    for name, module, var in CORE:
        env = {var: str(ports[name])}
        if name == "ingest":
            env["BLAMETRAIL_INGEST_SPOOL_DIR"] = str(spool)
        specs.append(
            ServiceSpec(name, module, None if name == "sentry-stub" else ports[name], env=env)
        )
    return tuple(specs)


@contextmanager
def running_stack() -> Iterator[Stack]:
    """Start it all, seed a tenant (API key, internal connection, service, mapping), yield."""
    tag = uuid.uuid4().hex[:8]
    home = local_dir() / "faults" / tag
    kafka_port = free_port()
    kafka = KafkaNode(home / "kafka", kafka_port, free_port())
    pg = PgCluster(home / "postgres", free_port(), database="faults")
    ports = {name: free_port() for name, _, _ in CORE}
    run = home / "run"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "DATABASE_URL": pg.dsn(),
        "BLAMETRAIL_SECRET_KEYS": generate_key(),
        "BLAMETRAIL_SENTRY_STUB_TOKEN": STUB_TOKEN,
        # the fault tests connect Sentry organizations the stand-in has no token for
        "BLAMETRAIL_API_VERIFY_CONNECTIONS": "false",
        "BLAMETRAIL_PUBLIC_INGEST_URL": f"http://127.0.0.1:{ports['ingest']}",
        "BLAMETRAIL_SHUTDOWN_GRACE_S": "10",
        # the reconciler runs (its readiness and metrics are checked) but sweeps no connection
        # during the suite: a sweep would repair the webhooks the faults refused, and the fault
        # tests count exactly what the webhooks made
        "BLAMETRAIL_RECONCILER_START_DELAY_S": "3600",
        "BLAMETRAIL_TOPIC_PREFIX": "",
    }
    st = Stack(home, kafka, pg, env, _specs(ports, home / "spool"), run, ports)
    try:
        pg.start()
        kafka.start()
        migrate(st.dsn)
        asyncio.run(
            ensure_topics(KafkaSettings(bootstrap_servers=kafka.bootstrap, topic_prefix=""))
        )
        start_all(st.specs, timeout_s=120, where=run, env=env, quiet=True)
        _seed(st)
        yield st
    finally:
        stop_all(st.specs, timeout_s=30, where=run)
        kafka.stop(timeout_s=10)
        pg.stop()
        if not os.environ.get("BLAMETRAIL_KEEP_FAULT_STACK"):
            shutil.rmtree(home / "kafka", ignore_errors=True)
            shutil.rmtree(home / "postgres", ignore_errors=True)


def _seed(st: Stack) -> None:
    key = subprocess.run(
        [sys.executable, "-m", "blametrail_common.cli", "apikey", "create", "--org", "faults"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **st.env},
    ).stdout.strip()
    st.api_key = key
    with st.api() as api:
        conn = api.post(
            "/api/v1/integrations/sentry/connections",
            json={
                "mode": "internal",
                "sentry_org_slug": "acme",
                "api_base_url": st.url("sentry-stub"),
                "client_secret": CLIENT_SECRET,
                "auth_token": STUB_TOKEN,
            },
        )
        assert conn.status_code == 201, conn.text
        st.connection_id = conn.json()["id"]
        svc = api.post("/api/v1/services", json={"name": "Checkout", "slug": "checkout"})
        assert svc.status_code == 201, svc.text
        st.service_id = svc.json()["id"]
        mapped = api.post(
            "/api/v1/integrations/sentry/mappings",
            json={
                "connection_id": st.connection_id,
                "sentry_project_slug": "checkout-api",
                "service_id": st.service_id,
            },
        )
        assert mapped.status_code == 201, mapped.text
    (org,) = st.query("SELECT id FROM organizations WHERE slug = 'faults'")
    st.tenant = str(org[0])
