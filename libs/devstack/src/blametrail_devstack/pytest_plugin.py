"""The pytest fixture layer over real infrastructure (loaded by ``-p blametrail_devstack.pytest_plugin``).

Where Kafka and Postgres come from, in this order:

1. ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` when both are set (nothing is started);
2. testcontainers (Kafka + Postgres modules) when a Docker engine answers;
3. otherwise the local stack (real Kafka jars + Debian's Postgres) on free ports, under
   ``.local/test-stack``, started once per session and stopped at its end.

Every session then gets its own topic prefix and its own fresh database (migrated), so several
sessions can share one broker and one server. On a shared broker (origin ``env``) a session deletes
at its end the topics of every prefix it created (its own and the ones its tests made through
``ensure_topics``): a broker shared by many sessions otherwise collects tens of thousands of
partitions and dies of too many open files. Tests that use these fixtures are marked
``integration`` automatically; ``-m "not integration"`` is the fast pure suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from blametrail_common.db import migrate
from blametrail_common.kafka import admin as kafka_admin
from blametrail_common.settings import KafkaSettings

from blametrail_devstack.paths import local_dir
from blametrail_devstack.postgres import PgCluster
from blametrail_devstack.stack import LocalStack
from blametrail_devstack.testkit import dedicated_postgres

INFRA_FIXTURES = {"infra", "kafka_settings", "database_url", "session_env"}
# (bootstrap servers, topic prefix) of every topic set this session created
_CREATED: set[tuple[str, str]] = set()


def pytest_configure(config: pytest.Config) -> None:
    """Record the prefixes the session's tests create topics under (they import
    ``ensure_topics`` after this runs, so they get the recording one)."""
    original = kafka_admin.ensure_topics

    async def recording(settings: KafkaSettings, *args: Any, **kwargs: Any) -> Any:
        if settings.topic_prefix:
            _CREATED.add((settings.bootstrap_servers, settings.topic_prefix))
        return await original(settings, *args, **kwargs)

    kafka_admin.ensure_topics = recording


async def delete_prefixed_topics(created: set[tuple[str, str]]) -> int:
    """Delete every topic under the given (bootstrap, prefix) pairs; best effort, the count."""
    deleted = 0
    for bootstrap in {b for b, _ in created}:
        prefixes = tuple(p for b, p in created if b == bootstrap)
        client = kafka_admin.admin_client(KafkaSettings(bootstrap_servers=bootstrap))
        try:
            await asyncio.wait_for(client.start(), 20)
            names = [t for t in await client.list_topics() if t.startswith(prefixes)]
            for i in range(0, len(names), 200):
                await asyncio.wait_for(client.delete_topics(names[i : i + 200]), 60)
            deleted += len(names)
        except Exception as exc:  # a broker already gone keeps nothing to clean
            print(f"topics under {prefixes[:3]}... not deleted: {exc!r}")
        finally:
            with contextlib.suppress(Exception):
                await client.close()
    return deleted


@dataclass
class Infra:
    """Where the session's broker and database server are, and who provided them."""

    bootstrap: str
    server_dsn: str  # a DSN on the server; the session database is created beside it
    origin: str  # "env" | "testcontainers" | "local"
    started: list[str] = field(default_factory=list)


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        res = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def choose_origin(environ: Mapping[str, str], docker: Callable[[], bool]) -> str:
    """Pure choice of where infrastructure comes from (see module docstring)."""
    if environ.get("KAFKA_BOOTSTRAP_SERVERS") and environ.get("DATABASE_URL"):
        return "env"
    return "testcontainers" if docker() else "local"


@contextlib.contextmanager
def open_infra(
    environ: Mapping[str, str], docker: Callable[[], bool] = docker_available
) -> Iterator[Infra]:
    origin = choose_origin(environ, docker)
    if origin == "env":
        yield Infra(environ["KAFKA_BOOTSTRAP_SERVERS"], environ["DATABASE_URL"], origin)
    elif origin == "testcontainers":
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        with (
            KafkaContainer("apache/kafka:3.9.1").with_kraft() as kafka,
            PostgresContainer("postgres:15", driver=None) as pg,
        ):
            yield Infra(
                kafka.get_bootstrap_server(), pg.get_connection_url(), origin, ["kafka", "postgres"]
            )
    else:
        stack = LocalStack.ephemeral(local_dir() / "test-stack" / uuid.uuid4().hex[:8])
        try:
            stack.start()
            yield Infra(
                stack.kafka.bootstrap, stack.postgres.dsn("postgres"), origin, ["kafka", "postgres"]
            )
        finally:
            stack.stop()
            shutil.rmtree(stack.kafka.home.parent, ignore_errors=True)


def create_database(server_dsn: str, name: str) -> str:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    return psycopg.conninfo.make_conninfo(server_dsn, dbname=name)


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    with open_infra(os.environ) as found:
        yield found
        if found.origin == "env":  # a throw-away broker needs no cleaning
            asyncio.run(delete_prefixed_topics(set(_CREATED)))


@pytest.fixture(scope="session")
def session_env(infra: Infra) -> Iterator[dict[str, str]]:
    """Topic prefix + fresh migrated database for this session, also exported to ``os.environ``
    so services started as subprocesses by tests find them."""
    tag = uuid.uuid4().hex[:8]
    dsn = create_database(infra.server_dsn, f"bt_test_{tag}")
    migrate(dsn)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap,
        "DATABASE_URL": dsn,
        "BLAMETRAIL_TOPIC_PREFIX": f"t{tag}.",
    }
    asyncio.run(
        kafka_admin.ensure_topics(
            KafkaSettings(
                bootstrap_servers=infra.bootstrap, topic_prefix=env["BLAMETRAIL_TOPIC_PREFIX"]
            )
        )
    )
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def kafka_settings(session_env: dict[str, str]) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=session_env["KAFKA_BOOTSTRAP_SERVERS"],
        topic_prefix=session_env["BLAMETRAIL_TOPIC_PREFIX"],
    )


@pytest.fixture
def dedicated_pg() -> Iterator[PgCluster]:
    """A Postgres cluster of the test's own, never the shared one (not started: the test starts,
    crashes and restarts it); stopped and removed afterwards."""
    with dedicated_postgres("heal") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def database_url(session_env: dict[str, str]) -> str:
    return session_env["DATABASE_URL"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INFRA_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
