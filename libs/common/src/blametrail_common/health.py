"""``/healthz``, ``/readyz`` and ``/metrics`` routes, shared by every service.

``/healthz`` answers 200 while the process serves HTTP (liveness). ``/readyz`` runs the
service's readiness checks and answers 503 naming the failing ones. A check wrapped in
:class:`Degrading` is reported the same way but does not take the service out of rotation: the
service still serves its requests without that dependency (only a background part of it waits),
so ``/readyz`` answers 200 with ``"status": "degraded"``. ``/metrics`` is the
Prometheus text exposition of the default registry; each scrape runs the same checks first (with
the same timeout), so ``blametrail_ready`` is as current as ``/readyz`` would be.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from blametrail_common.metrics import READY

__all__ = ["Degrading", "ReadinessCheck", "evaluate", "health_routes"]

ReadinessCheck = Callable[[], Awaitable[bool]]


class Degrading:
    """A readiness check whose failure degrades the service rather than stopping it serving."""

    def __init__(self, check: ReadinessCheck) -> None:
        self._check = check

    async def __call__(self) -> bool:
        return await self._check()


def health_routes(checks: Mapping[str, ReadinessCheck], timeout_s: float = 2.0) -> list[BaseRoute]:
    """Routes for liveness, readiness (every check must answer True within ``timeout_s``) and metrics."""

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        status = await evaluate(checks, timeout_s)
        ok = _serving(checks, status)
        word = "not ready" if not ok else "ready" if all(status.values()) else "degraded"
        return JSONResponse({"status": word, "checks": status}, status_code=200 if ok else 503)

    async def metrics(_: Request) -> Response:
        await evaluate(checks, timeout_s)  # blametrail_ready as of this scrape
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz, methods=["GET"], include_in_schema=False),
        Route("/readyz", readyz, methods=["GET"], include_in_schema=False),
        Route("/metrics", metrics, methods=["GET"], include_in_schema=False),
    ]


async def evaluate(checks: Mapping[str, ReadinessCheck], timeout_s: float) -> dict[str, bool]:
    """Run every check concurrently (each bounded by ``timeout_s``); sets ``blametrail_ready``."""
    results = await asyncio.gather(*(_run(c, timeout_s) for c in checks.values()))
    status = dict(zip(checks, results, strict=True))
    READY.set(1 if _serving(checks, status) else 0)
    return status


def _serving(checks: Mapping[str, ReadinessCheck], status: Mapping[str, bool]) -> bool:
    return all(ok or isinstance(checks[name], Degrading) for name, ok in status.items())


async def _run(check: ReadinessCheck, timeout_s: float) -> bool:
    try:
        return await asyncio.wait_for(check(), timeout_s)
    except Exception:  # a failing check means "not ready", whatever the reason
        return False
