"""Running a consumer loop beside a small health/metrics HTTP server, until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import uvicorn
from starlette.applications import Starlette

from blametrail_common.health import ReadinessCheck, health_routes
from blametrail_common.kafka.consumer import install_stop_signals
from blametrail_common.settings import RunnerSettings

__all__ = ["run_with_health"]

log = logging.getLogger(__name__)

HARD_EXIT_CODE = 70
"""Exit status when even a cancelled loop would not end: the supervisor restarts us."""


async def run_with_health(
    host: str,
    port: int,
    checks: Mapping[str, ReadinessCheck],
    loop: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    *,
    grace_s: float | None = None,
) -> None:
    """Run ``loop(stop)`` and the health server; SIGTERM sets ``stop``, the loop finishes its batch.

    Shutdown is bounded: the loop gets ``grace_s`` (``BLAMETRAIL_SHUTDOWN_GRACE_S``) to finish the
    batch in hand and commit; then it is cancelled, and its uncommitted batch is redelivered to
    whoever takes the partitions (at-least-once, idempotent effects). If the cancelled loop does
    not end either, the process exits hard: a stuck shutdown must never outlive its pod.

    (uvicorn captures SIGTERM while it serves and re-raises it when it exits, so both stop.)"""
    grace = RunnerSettings().shutdown_grace_s if grace_s is None else grace_s
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
    work = asyncio.create_task(loop(stop))
    try:
        await _bounded(work, stop, grace)
    finally:
        server.should_exit = True
        await http


async def _bounded(work: asyncio.Task[None], stop: asyncio.Event, grace_s: float) -> None:
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not work.done():
        started = asyncio.get_running_loop().time()
        log.info("stopping: finishing the batch in hand", extra={"grace_s": grace_s})
        done, _ = await asyncio.wait({work}, timeout=grace_s)
        if not done:
            log.warning("stop grace exceeded: cancelling; the uncommitted batch is redelivered")
            work.cancel()
            done, _ = await asyncio.wait({work}, timeout=10.0)
            if not done:
                log.error("the cancelled loop did not end: exiting hard")
                logging.shutdown()
                os._exit(HARD_EXIT_CODE)
        log.info(
            "stopped",
            extra={"seconds": round(asyncio.get_running_loop().time() - started, 3)},
        )
    if not work.cancelled():
        work.result()  # re-raise the loop's own error
