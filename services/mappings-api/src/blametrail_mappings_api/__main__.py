"""Composition root: settings -> logging -> pool -> background workers -> app -> uvicorn.

The background workers (outbox relay, deploy store, installation consumers, token keeper) each
run supervised (:mod:`blametrail_common.resilience`): after an error they start again with a
backoff. One that ends anyway takes the process down; none is left dead inside a serving API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import httpx
import uvicorn
import uvloop
from blametrail_common.crypto import SecretBox
from blametrail_common.gctune import tune_gc
from blametrail_common.health import Degrading, ReadinessCheck
from blametrail_common.kafka import EventProducer, consume, create_producer
from blametrail_common.logging import configure_logging
from blametrail_common.resilience import DEPENDENCIES, KAFKA, supervise
from blametrail_common.settings import KafkaSettings, PostgresSettings, SecretsSettings
from starlette.applications import Starlette

from blametrail_mappings_api.app import create_app
from blametrail_mappings_api.repository import Repository
from blametrail_mappings_api.sentry.binding import InstallationLearner
from blametrail_mappings_api.sentry.client import SentryApp
from blametrail_mappings_api.sentry.deploy_import import SentryDeployStore
from blametrail_mappings_api.sentry.oauth import OAuth
from blametrail_mappings_api.settings import ApiSettings, OAuthSettings, SentryUiSettings
from blametrail_mappings_api.store.db import create_pool
from blametrail_mappings_api.store.outbox import Relay

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

    server: uvicorn.Server | None = None
    crashed: list[str] = []

    def fatal(name: str) -> None:
        """A background worker ended while the API serves: take the process down with it."""
        crashed.append(name)
        if server is not None:
            server.should_exit = True

    async def relay_once(stop: asyncio.Event) -> None:
        if not producer.started:
            await producer.start()
        await relay.run(stop, dsn)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await pool.open()
        if settings.relay_enabled:
            workers["outbox-relay"] = asyncio.create_task(
                supervise("outbox-relay", relay_once, stop)
            )
        workers["deploys"] = asyncio.create_task(
            consume(
                kafka, ["deploys"], settings.deploy_store_group, store.handle, stop, name="deploys"
            )
        )
        workers["installations-seen"] = asyncio.create_task(
            consume(
                kafka,
                ["sentry-installations"],
                SentryUiSettings().installations_group,
                InstallationLearner(pool).handle,
                stop,
                name="installations-seen",
            )
        )
        if oauth is not None:
            keeper = oauth
            topics = ["sentry-installations", "oauth-refresh-requests"]
            workers["oauth-installations"] = asyncio.create_task(
                consume(kafka, topics, oauth_settings.group_id, oauth.handle, stop, name="oauth")
            )

            async def keep(stop: asyncio.Event) -> None:
                await keeper.keep(stop, dsn)

            workers["oauth-token-keeper"] = asyncio.create_task(
                supervise("oauth-token-keeper", keep, stop)
            )
        for name, worker in workers.items():
            worker.add_done_callback(_report(name, stop, fatal))
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*workers.values(), return_exceptions=True)
            await http.aclose()
            if producer.started:
                await producer.stop()
            await pool.close()

    async def db_ok() -> bool:
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
        return True

    async def relay_ok() -> bool:
        return relay.running or not settings.relay_enabled

    async def workers_ok() -> bool:  # a worker that ended before shutdown takes the process down
        return all(not w.done() for w in workers.values())

    # The API serves from Postgres; without Kafka only the relay and the background consumers
    # wait (changes stay in the outbox), so Kafka degrades the API rather than taking it (and
    # the Sentry UI components, the OAuth redirect) out of rotation.
    checks: dict[str, ReadinessCheck] = {
        "postgres": db_ok,
        "kafka": Degrading(DEPENDENCIES.check(KAFKA)),
        "relay": Degrading(relay_ok),
        "consumers": workers_ok,
    }
    app = create_app(
        settings,
        Repository(pool, box),
        checks,
        lifespan,
        oauth,
        sentry_http=http,
        verify_connections=settings.verify_connections,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        # X-Forwarded-For is read by the sign-in route itself, trusting only
        # BLAMETRAIL_API_TRUSTED_PROXIES (auth.client_address): uvicorn must not rewrite the peer.
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    await server.serve()
    if crashed:
        raise SystemExit(f"background worker ended: {', '.join(crashed)}")


def _report(
    name: str, stop: asyncio.Event, fatal: Callable[[str], None]
) -> Callable[[asyncio.Task[None]], None]:
    """Every worker is supervised (restarted after errors, with backoff); one that ends anyway
    while the API serves (cancelled, or a BaseException) stops the process: its supervisor
    (Kubernetes, ``make up``) starts a whole one again."""

    def done(task: asyncio.Task[None]) -> None:
        if stop.is_set():
            return
        error = None if task.cancelled() else task.exception()
        log.error(
            "background worker ended; stopping the API",
            extra={"worker": name, "error": type(error).__name__ if error else None},
            exc_info=error,
        )
        fatal(name)

    return done


def main() -> None:
    configure_logging("mappings-api")
    tune_gc()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())


if __name__ == "__main__":
    main()
