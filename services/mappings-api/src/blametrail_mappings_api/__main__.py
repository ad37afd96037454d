"""Composition root: settings -> logging -> pool -> outbox relay task -> app -> uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import httpx
import uvicorn
import uvloop
from blametrail_common.crypto import SecretBox
from blametrail_common.health import ReadinessCheck
from blametrail_common.kafka import EventProducer, consume, create_producer
from blametrail_common.logging import configure_logging
from blametrail_common.settings import KafkaSettings, PostgresSettings, SecretsSettings
from starlette.applications import Starlette

from blametrail_mappings_api.app import create_app
from blametrail_mappings_api.deploy_import import SentryDeployStore
from blametrail_mappings_api.oauth import OAuth, OAuthSettings
from blametrail_mappings_api.outbox import Relay
from blametrail_mappings_api.repository import Repository, create_pool
from blametrail_mappings_api.sentry_app import SentryApp
from blametrail_mappings_api.sentry_ui import SentryUiSettings
from blametrail_mappings_api.settings import ApiSettings

log = logging.getLogger(__name__)


async def serve() -> None:
    settings, kafka, dsn = ApiSettings(), KafkaSettings(), PostgresSettings().database_url
    box = SecretBox(SecretsSettings().secret_keys.get_secret_value())
    pool = create_pool(dsn, settings.pool_max)
    producer = EventProducer(create_producer(kafka), kafka)
    relay = Relay(pool, producer)
    store = SentryDeployStore(pool)
    stop = asyncio.Event()
    workers: dict[str, asyncio.Task[None]] = {}
    http = httpx.AsyncClient()
    oauth_settings, secrets = OAuthSettings(), SentryUiSettings().public_secrets()
    oauth = None
    if oauth_settings.client_id and not secrets:
        log.error("BLAMETRAIL_SENTRY_CLIENT_ID is set but no public client secret: OAuth is off")
    if oauth_settings.client_id and secrets:
        app_client = SentryApp(
            http, oauth_settings.sentry_url, oauth_settings.client_id, secrets[0]
        )
        oauth = OAuth(pool, box, app_client, oauth_settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await pool.open()
        task = None
        if settings.relay_enabled:
            await producer.start()
            task = asyncio.create_task(relay.run(stop, dsn))
        workers["deploys"] = asyncio.create_task(
            consume(kafka, ["deploys"], settings.deploy_store_group, store.handle, stop)
        )
        if oauth is not None:
            topics = ["sentry-installations", "oauth-refresh-requests"]
            workers["oauth-installations"] = asyncio.create_task(
                consume(kafka, topics, oauth_settings.group_id, oauth.handle, stop)
            )
            workers["oauth-token-keeper"] = asyncio.create_task(oauth.keep(stop, dsn))
        for name, worker in workers.items():
            worker.add_done_callback(_report(name, stop))
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*workers.values(), return_exceptions=True)
            await http.aclose()
            if task is not None:
                await task
                await producer.stop()
            await pool.close()

    async def db_ok() -> bool:
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
        return True

    async def relay_ok() -> bool:
        return relay.running or not settings.relay_enabled

    async def workers_ok() -> bool:  # a consumer that ended before shutdown has crashed
        return all(not w.done() for w in workers.values())

    checks: dict[str, ReadinessCheck] = {
        "postgres": db_ok,
        "relay": relay_ok,
        "consumers": workers_ok,
    }
    app = create_app(settings, Repository(pool, box), checks, lifespan, oauth)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    await uvicorn.Server(config).serve()


def _report(name: str, stop: asyncio.Event) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and not stop.is_set():
            log.error(
                "background consumer crashed; /readyz fails until a restart",
                extra={"worker": name},
                exc_info=task.exception(),
            )

    return done


def main() -> None:
    configure_logging("mappings-api")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())


if __name__ == "__main__":
    main()
