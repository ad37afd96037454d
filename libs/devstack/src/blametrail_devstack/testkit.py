"""Small helpers shared by the tests that run real processes against dedicated servers.

- :func:`dedicated_postgres`: a cluster of a test's own (to crash and restart it), on a free port
  under ``.local/test-pg`` rather than pytest's temporary folder: Postgres runs as its own user,
  and another pytest session on the machine resets ``/tmp/pytest-of-<user>`` to 0700, after
  which that user can no longer reach its data directory (``pg_ctl: could not access
  directory``).
- :func:`spawn`: ``python -m module`` as a real process, its output appended to a log file.
- :func:`until`: poll an async predicate with a deadline that names what never came.
- :func:`readyz`: a service's ``/readyz`` status and checks (``0, {}`` while it does not answer).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from blametrail_devstack.paths import local_dir
from blametrail_devstack.postgres import PgCluster
from blametrail_devstack.stack import free_port

__all__ = ["dedicated_postgres", "readyz", "spawn", "until"]


@contextmanager
def dedicated_postgres(database: str) -> Iterator[PgCluster]:
    """A cluster (not started: the test starts, crashes and restarts it) whose ``database`` is
    created at start; stopped and removed afterwards."""
    pg = PgCluster(local_dir() / "test-pg" / uuid.uuid4().hex[:8], free_port(), database)
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(pg.home, ignore_errors=True)


def spawn(
    module: str, env: dict[str, str], log: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python -m module`` with exactly ``env``; stdout and stderr appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def stop_gracefully(proc: subprocess.Popen[bytes], grace_s: float = 30) -> None:
    """SIGTERM, ``grace_s`` to drain and exit, then SIGKILL."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def until(
    what: str, predicate: Callable[[], Awaitable[bool]], timeout_s: float, every_s: float = 0.2
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(every_s)


async def readyz(client: httpx.AsyncClient) -> tuple[int, dict[str, bool]]:
    try:
        res = await client.get("/readyz", timeout=5)
    except httpx.HTTPError:
        return 0, {}
    return res.status_code, res.json().get("checks", {})
