"""Running a consumer loop beside a small health/metrics HTTP server, until SIGTERM."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import uvicorn
from starlette.applications import Starlette

from blametrail_common.health import ReadinessCheck, health_routes
from blametrail_common.kafka.consumer import install_stop_signals

__all__ = ["run_with_health"]


async def run_with_health(
    host: str,
    port: int,
    checks: Mapping[str, ReadinessCheck],
    loop: Callable[[asyncio.Event], Awaitable[None]],
) -> None:
    """Run ``loop(stop)`` and the health server; SIGTERM sets ``stop``, the loop finishes its batch.

    (uvicorn captures SIGTERM while it serves and re-raises it when it exits, so both stop.)"""
    stop = asyncio.Event()
    install_stop_signals(stop)
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=health_routes(checks)),
            host=host,
            port=port,
            log_config=None,
            access_log=False,
        )
    )
    http = asyncio.create_task(server.serve())
    try:
        await loop(stop)
    finally:
        server.should_exit = True
        await http
