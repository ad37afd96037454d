"""Test support shared by every package's tests: the Sentry fixtures, located inside the repo.

``sentry_fixtures/`` is a verbatim copy of ``shared/sentry/fixtures`` (hand-built for this project,
see its README): webhook bodies, wire-exact signed vectors, API responses, UI-component bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

__all__ = ["FIXTURES", "TEST_SECRET", "Loop", "background", "fixture_bytes", "signed_fixture"]

Loop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]

FIXTURES = Path(__file__).parent / "sentry_fixtures"
TEST_SECRET = (FIXTURES / "signed" / "TEST_SECRET.txt").read_text().strip()


def fixture_bytes(relative: str) -> bytes:
    """The bytes of ``sentry_fixtures/<relative>``, e.g. ``"webhooks/issue.created.json"``."""
    return (FIXTURES / relative).read_bytes()


def signed_fixture(name: str) -> tuple[bytes, dict[str, str]]:
    """A wire-exact signed webhook: ``(body bytes, headers)`` for e.g. ``"issue.created"``."""
    import orjson

    body = (FIXTURES / "signed" / f"{name}.body").read_bytes()
    headers = orjson.loads((FIXTURES / "signed" / f"{name}.headers.json").read_bytes())
    return body, {str(k): str(v) for k, v in headers.items()}


@contextlib.asynccontextmanager
async def background(*loops: Loop) -> AsyncIterator[asyncio.Event]:
    """Run ``loop(stop)`` tasks for the block; on exit set ``stop``, wait (30 s at most) and
    raise the first error a loop ended with."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(loop(stop)) for loop in loops]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        for task in tasks:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
