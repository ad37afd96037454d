"""The control plane outlives a Postgres restart (issue 15, defect 2).

The API runs as its own process against a dedicated Postgres (never the shared one), which is
stopped with ``-m immediate`` and started again. Readiness must name ``postgres`` meanwhile and
recover afterwards (the relay included), and a connection created after the restart must reach
``cp-connections``: the outbox relay reconnected by itself.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.db import migrate
from blametrail_common.events import ConnectionStateV1
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.settings import KafkaSettings
from blametrail_devstack.postgres import PgCluster
from blametrail_devstack.stack import free_port
from blametrail_devstack.testkit import readyz, spawn, until
from blametrail_mappings_api.repository import Repository, create_pool


@pytest.mark.timeout(90)
async def test_relay_and_readiness_recover_after_a_postgres_restart(
    kafka_settings: KafkaSettings, tmp_path: Path, dedicated_pg: PgCluster
) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"r{uuid.uuid4().hex[:6]}."
    )
    await ensure_topics(kafka)
    port, key = free_port(), generate_key()
    log_path = tmp_path / "api.log"
    proc: subprocess.Popen[bytes] | None = None
    table = CompactedTable(kafka, "cp-connections", ConnectionStateV1)
    try:
        dedicated_pg.start()
        dsn = dedicated_pg.dsn()
        migrate(dsn)
        pool = create_pool(dsn, 2)
        await pool.open()
        try:
            api_key = await Repository(pool, SecretBox(key)).create_api_key("heal-org")
        finally:
            await pool.close()
        proc = spawn(
            "blametrail_mappings_api",
            {
                "PATH": "/usr/bin:/bin",
                "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                "BLAMETRAIL_TOPIC_PREFIX": kafka.topic_prefix,
                "DATABASE_URL": dsn,
                "BLAMETRAIL_SECRET_KEYS": key,
                "BLAMETRAIL_API_PORT": str(port),
                "BLAMETRAIL_API_DEPLOY_STORE_GROUP": f"deploys-{uuid.uuid4().hex[:6]}",
                # no Sentry here to check the test's made-up tokens with (the relay is the point)
                "BLAMETRAIL_API_VERIFY_CONNECTIONS": "false",
            },
            log_path,
        )
        auth = {"Authorization": f"Bearer {api_key}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            async def ready() -> bool:
                return (await readyz(client))[0] == 200

            async def connect(slug: str) -> str:
                """Create a connection; a request that meets a connection the restart broke may
                fail once (the pool drops it), so a 5xx is retried a few times."""
                for _ in range(5):
                    res = await client.post(
                        "/api/v1/integrations/sentry/connections",
                        headers=auth,
                        json={
                            "mode": "internal",
                            "sentry_org_slug": slug,
                            "client_secret": "s3cret",
                            "auth_token": "sntrys_x",
                        },
                    )
                    if res.status_code == 201:
                        return str(res.json()["id"])
                    assert res.status_code >= 500, res.text
                    await asyncio.sleep(0.5)
                raise AssertionError(f"no connection created: {res.status_code} {res.text}")

            await until("the API to be ready", ready, 30)
            before = await connect("before-restart")
            dedicated_pg.stop("immediate")

            async def postgres_named() -> bool:
                status, checks = await readyz(client)
                return status == 503 and checks.get("postgres") is False

            await until("/readyz to name postgres", postgres_named, 15)
            await asyncio.sleep(2)  # the relay meets the dead server meanwhile
            assert proc.poll() is None, "the API exited while Postgres was away"
            dedicated_pg.start()
            await until("/readyz 200 again (relay included)", ready, 40)
            after = await connect("after-restart")
            await table.start()

            async def published() -> bool:
                return table.get(before) is not None and table.get(after) is not None

            await until("both connections on cp-connections", published, 30)
            status, checks = await readyz(client)
            assert status == 200, checks
            assert checks["relay"] is True, checks  # a degrading check: 200 alone does not say
            metrics = (await client.get("/metrics")).text
            assert "blametrail_outbox_pending 0.0" in metrics
            assert "blametrail_ready 1.0" in metrics
        assert proc.poll() is None, "the API exited"
    except BaseException:
        if log_path.exists():
            sys.stderr.write(log_path.read_text()[-6000:])
        raise
    finally:
        await table.stop()
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
