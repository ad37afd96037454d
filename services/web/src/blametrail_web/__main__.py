"""Composition root: settings -> logging -> the API client -> app -> uvicorn."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets

import httpx
import uvicorn
import uvloop
from blametrail_common.gctune import tune_gc
from blametrail_common.logging import configure_logging

from blametrail_web.app import create_app
from blametrail_web.settings import WebSettings

log = logging.getLogger("blametrail_web")


def signing_key(settings: WebSettings) -> bytes:
    """The key for CSRF tokens and signed cookies (never logged): the web's own
    ``BLAMETRAIL_WEB_SECRET_KEY``. Never the master ``BLAMETRAIL_SECRET_KEYS`` (the key that
    decrypts every organization's Sentry tokens): the public-facing web is not given it."""
    own = settings.secret_key.get_secret_value()
    if own:
        return hashlib.sha256(b"blametrail-web:" + own.encode()).digest()
    log.warning(
        "no BLAMETRAIL_WEB_SECRET_KEY: a random signing key for this process (forms open in"
        " another replica or before a restart are refused)"
    )
    return secrets.token_bytes(32)


async def serve() -> None:
    settings = WebSettings()
    async with httpx.AsyncClient(
        base_url=settings.api_url,
        timeout=settings.api_timeout_s,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
    ) as http:
        app = create_app(settings, signing_key(settings), http)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            http="httptools",
            timeout_graceful_shutdown=10,
            log_config=None,
            access_log=False,
        )
        log.info("web listening", extra={"port": settings.port, "api": settings.api_url})
        await uvicorn.Server(config).serve()


def main() -> None:
    configure_logging("web")
    tune_gc()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())


if __name__ == "__main__":
    main()
