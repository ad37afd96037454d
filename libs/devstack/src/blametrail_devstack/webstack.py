"""Development only: the whole product as ``make up`` runs it (every service a subprocess under
one supervisor, the Sentry stand-in, the web), on a Kafka broker of its own (a shared broker
busy with every other session's topics made its consumers time out) and a database of its own
on the test session's Postgres server, on free ports (never ``make up``'s 8080-8090). For the browser tests and ``bench/web``; files under
``.local/webstack/<tag>``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import psycopg
from blametrail_common.crypto import generate_key
from blametrail_common.db import migrate
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.settings import KafkaSettings
from blametrail_common.signature import sign
from blametrail_common.testing import signed_fixture

from blametrail_devstack.demo import ensure_admin
from blametrail_devstack.kafka import KafkaNode
from blametrail_devstack.paths import local_dir
from blametrail_devstack.services import ServiceSpec, start_all, stop_all
from blametrail_devstack.stack import free_port

__all__ = ["STUB_TOKEN", "WebStack", "running_web_stack", "webhook_for"]

STUB_TOKEN = "webstack-internal-token"  # noqa: S105 - the stand-in's token for org acme

# name, module, the variable naming its HTTP port
PARTS = (
    ("sentry-stub", "blametrail_sentry_stub", "BLAMETRAIL_SENTRY_STUB_PORT"),
    ("mappings-api", "blametrail_mappings_api", "BLAMETRAIL_API_PORT"),
    ("ingest", "blametrail_ingest", "BLAMETRAIL_INGEST_PORT"),
    ("normalizer", "blametrail_normalizer", "BLAMETRAIL_NORMALIZER_PORT"),
    ("enricher", "blametrail_enricher", "BLAMETRAIL_ENRICHER_PORT"),
    ("projector", "blametrail_projector", "BLAMETRAIL_PROJECTION_PORT"),
    ("suspects", "blametrail_suspects", "BLAMETRAIL_SUSPECTS_PORT"),
    ("web", "blametrail_web", "BLAMETRAIL_WEB_PORT"),
    ("replay-jobs", "blametrail_replay.worker", "BLAMETRAIL_JOBS_PORT"),
    # one public host, as make up's: the connect link and the OAuth callback go through it
    ("edge", "blametrail_devstack.edge", "BLAMETRAIL_EDGE_PORT"),
)
PUBLIC_APP_CLIENT_ID = "webstack-public-app"
# Consumer groups are not prefixed by BLAMETRAIL_TOPIC_PREFIX: on a shared broker each stack
# names its own, or it would join (and rebalance, or fence) another stack's groups.
GROUP_VARS = (
    "BLAMETRAIL_API_DEPLOY_STORE_GROUP",
    "BLAMETRAIL_API_INSTALLATIONS_GROUP",
    "BLAMETRAIL_API_OAUTH_GROUP",
    "BLAMETRAIL_ENRICHER_GROUP",
    "BLAMETRAIL_NORMALIZER_APP_ID",
    "BLAMETRAIL_PROJECTION_GROUP",
    "BLAMETRAIL_SUSPECTS_GROUP",
)


@dataclass
class WebStack:
    home: Path
    env: dict[str, str]
    ports: dict[str, int]
    org: str = ""
    api_key: str = ""
    admin_email: str = ""
    admin_password: str = ""
    specs: tuple[ServiceSpec, ...] = field(default_factory=tuple)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def dsn(self) -> str:
        return self.env["DATABASE_URL"]

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url("mappings-api"),
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=15,
        )

    def post_webhook(self, connection_id: str, secret: str, project: str, issue_id: str) -> int:
        body, headers = webhook_for(project, issue_id, secret)
        got = httpx.post(
            f"{self.url('ingest')}/webhooks/sentry/{connection_id}",
            content=body,
            headers=headers,
            timeout=15,
        )
        return got.status_code


def webhook_for(project: str, issue_id: str, secret: str) -> tuple[bytes, dict[str, str]]:
    """Sentry's ``issue.created`` fixture for another project and issue, signed with ``secret``."""
    raw, headers = signed_fixture("issue.created")
    doc = orjson.loads(raw)
    issue = doc["data"]["issue"]
    issue["id"] = issue_id
    issue["shortId"] = f"{project.upper()}-{issue_id[-3:]}"
    issue["title"] = f"KeyError in {project}"
    seen = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    issue["firstSeen"] = issue["lastSeen"] = seen  # the list is newest first
    issue["project"] = {**issue["project"], "slug": project, "name": project}
    issue["project"]["id"] = str(zlib.crc32(project.encode()))
    body = orjson.dumps(doc)
    headers = {**headers, "Sentry-Hook-Signature": sign(body, secret)}
    headers["Request-ID"] = uuid.uuid4().hex
    headers["Sentry-Hook-Timestamp"] = str(int(time.time()))  # when Sentry sent it: now
    return body, headers


def _create_database(server_dsn: str, name: str) -> str:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    return psycopg.conninfo.make_conninfo(server_dsn, dbname=name)


def _drop_database(server_dsn: str, name: str) -> None:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@contextmanager
def running_web_stack(server_dsn: str, timeout_s: float = 180) -> Iterator[WebStack]:
    """Start a broker and it all, with a database on ``server_dsn``'s server; seed an
    organization with an API key and an admin (made as ``make up`` makes the demo's; no
    connection, service or mapping: the browser makes those)."""
    tag = uuid.uuid4().hex[:8]
    home = local_dir() / "webstack" / tag
    broker = KafkaNode(home / "kafka", free_port(), free_port())
    bootstrap = broker.bootstrap
    database = f"bt_web_{tag}"
    ports = {name: free_port() for name, _, _ in PARTS}
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DATABASE_URL": _create_database(server_dsn, database),
        "BLAMETRAIL_TOPIC_PREFIX": f"w{tag}.",
        "BLAMETRAIL_SECRET_KEYS": generate_key(),
        "BLAMETRAIL_SENTRY_STUB_TOKEN": STUB_TOKEN,
        "BLAMETRAIL_PUBLIC_INGEST_URL": f"http://127.0.0.1:{ports['edge']}",
        # the public (OAuth) app, played by the stand-in (its install page), as under make up
        "BLAMETRAIL_SENTRY_URL": f"http://127.0.0.1:{ports['sentry-stub']}",
        "BLAMETRAIL_SENTRY_CLIENT_ID": PUBLIC_APP_CLIENT_ID,
        "BLAMETRAIL_SENTRY_APP_SLUG": "blametrail",
        "BLAMETRAIL_INGEST_PUBLIC_CLIENT_SECRETS": f"webstack-{tag}-public-app-secret",
        "BLAMETRAIL_WEB_API_URL": f"http://127.0.0.1:{ports['mappings-api']}",
        "BLAMETRAIL_WEB_COOKIE_SECURE": "false",
        "BLAMETRAIL_WEB_POLL_INTERVAL_S": "1",
        "BLAMETRAIL_JOBS_POLL_S": "1",
        "BLAMETRAIL_INGEST_SPOOL_DIR": str(home / "spool"),
        "BLAMETRAIL_SHUTDOWN_GRACE_S": "10",
        **{var: f"webstack-{tag}-{var.lower()}" for var in GROUP_VARS},
    }
    own = {
        # the web signs with a key of its own and is never given the master key
        "web": {
            "BLAMETRAIL_WEB_SECRET_KEY": secrets.token_urlsafe(32),
            "BLAMETRAIL_SECRET_KEYS": "",
        },
        "edge": {
            "BLAMETRAIL_INGEST_URL": f"http://127.0.0.1:{ports['ingest']}",
            "BLAMETRAIL_API_URL": f"http://127.0.0.1:{ports['mappings-api']}",
            "BLAMETRAIL_WEB_URL": f"http://127.0.0.1:{ports['web']}",
        },
    }
    specs = tuple(
        ServiceSpec(
            name,
            module,
            None if name == "sentry-stub" else ports[name],
            env={var: str(ports[name]), **own.get(name, {})},
        )
        for name, module, var in PARTS
    )
    st = WebStack(home, env, ports, specs=specs)
    run = home / "run"
    try:
        broker.start(timeout_s=timeout_s)
        migrate(st.dsn)
        kafka = KafkaSettings(
            bootstrap_servers=bootstrap, topic_prefix=env["BLAMETRAIL_TOPIC_PREFIX"]
        )
        asyncio.run(ensure_topics(kafka))
        start_all(specs, timeout_s=timeout_s, where=run, env=env, quiet=True)
        _wait_stub(st.url("sentry-stub"), timeout_s)
        _seed(st)
        yield st
    finally:
        stop_all(specs, timeout_s=30, where=run)
        broker.stop(timeout_s=10)
        with suppress(psycopg.Error):
            _drop_database(server_dsn, database)
        if not os.environ.get("BLAMETRAIL_KEEP_WEB_STACK"):
            shutil.rmtree(home / "spool", ignore_errors=True)
            shutil.rmtree(home / "kafka", ignore_errors=True)


def _wait_stub(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(f"{url}/api/0/", timeout=2)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _seed(st: WebStack) -> None:
    st.org = f"web-{uuid.uuid4().hex[:6]}"
    st.api_key = subprocess.run(
        [sys.executable, "-m", "blametrail_common.cli", "apikey", "create", "--org", st.org],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **st.env},
    ).stdout.strip()
    # the admin as `make up` makes the demo's, its sign-in read back from the file it writes
    env = {"BLAMETRAIL_DEMO_API_KEY": st.api_key, "BLAMETRAIL_API_URL": st.url("mappings-api")}
    text = ensure_admin(env, st.home / "demo-credentials")
    assert ensure_admin(env, st.home / "demo-credentials") == text  # once only
    assert (st.home / "demo-credentials").stat().st_mode & 0o077 == 0  # the owner's only
    fields = dict(line.split(":", 1) for line in text.splitlines())
    st.admin_email, st.admin_password = fields["email"].strip(), fields["password"].strip()
