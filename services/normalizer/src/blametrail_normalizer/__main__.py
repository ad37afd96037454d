"""Composition root: settings -> logging -> faust app -> health server task -> faust worker."""

from __future__ import annotations

import faust
import uvicorn
from blametrail_common.health import health_routes
from blametrail_common.logging import configure_logging
from blametrail_common.settings import KafkaSettings
from starlette.applications import Starlette

from blametrail_normalizer.app import create_app
from blametrail_normalizer.settings import NormalizerSettings


def main() -> None:
    configure_logging("normalizer")
    settings = NormalizerSettings()
    normalizer = create_app(settings, KafkaSettings())

    async def ready() -> bool:
        return normalizer.ready()

    health = Starlette(routes=health_routes({"tables_and_producer": ready}))

    @normalizer.app.task  # type: ignore[untyped-decorator]
    async def _health_server() -> None:
        config = uvicorn.Config(
            health, host=settings.host, port=settings.port, log_config=None, access_log=False
        )
        await uvicorn.Server(config).serve()

    faust.Worker(normalizer.app, loglevel="INFO", redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
