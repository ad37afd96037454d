"""The service's sweep loop: each due connection swept on its jittered schedule, several
connections at once, each on its own.

A sweep Sentry refuses with a 401 asks the token's owner, the control plane's token keeper, for
an early refresh (``oauth-refresh-requests``; an internal token only a person can replace is
logged) and the connection is swept again at its next turn with whatever token
``cp-connections`` holds by then. Any other failure (a 403, a 404, a call given up, Postgres or
the broker away) is that connection's alone: the sweep records itself failed (when it got as far
as Postgres), is logged, and the connection is tried again after a backoff that doubles up to
the interval (:meth:`Schedule.failed`), while the other connections go on. A connection whose
sweep is still running (a long rate-limit hold of its organization) is not started again, and
does not hold up the others' turns (:meth:`SweepLoop.run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from blametrail_common.resilience import DEPENDENCIES, KAFKA, POSTGRES, sleep_or_stop
from blametrail_common.sentry_api import TokenRejected
from prometheus_client import Counter

from blametrail_reconciler.connections import Connections
from blametrail_reconciler.schedule import Schedule
from blametrail_reconciler.store import SweepRow
from blametrail_reconciler.sweep import Sweeper

__all__ = ["SweepLoop"]

log = logging.getLogger(__name__)
FAILED = Counter(
    "blametrail_reconcile_connection_failures_total",
    "Sweeps of a connection that failed (backed off; the other connections went on)",
    ["error"],
)


@dataclass
class SweepLoop:
    connections: Connections
    sweeper: Sweeper
    schedule: Schedule
    clock: Callable[[], float] = time.time
    at_once: int = 4
    """Connections swept at the same time."""
    swept: list[SweepRow] = field(default_factory=list, repr=False)
    """Sweeps that finished (for tests and logs; :meth:`once` replaces them every pass)."""
    running: dict[str, asyncio.Task[None]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._gate = asyncio.Semaphore(self.at_once)

    def _due(self) -> list[str]:
        now = self.clock()
        due = self.schedule.due_now([c.connection_id for c in self.connections.sweepable()], now)
        return [c for c in due if c not in self.running]

    def _start(self, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        started = []
        for conn_id in self._due():
            if stop.is_set():
                break
            task = asyncio.create_task(self._one(conn_id), name=f"sweep-{conn_id}")
            self.running[conn_id] = task
            task.add_done_callback(self._finished(conn_id))
            started.append(task)
        return started

    def _finished(self, conn_id: str) -> Callable[[asyncio.Task[None]], None]:
        def forget(_: asyncio.Task[None]) -> None:
            self.running.pop(conn_id, None)

        return forget

    async def once(self, stop: asyncio.Event) -> int:
        """Sweep each connection due now (at most ``at_once`` at a time) and wait for them; the
        number of sweeps started."""
        self.swept = []
        started = self._start(stop)
        await asyncio.gather(*started)
        return len(started)

    async def run(self, stop: asyncio.Event, tick_s: float = 1.0) -> None:
        """Start each connection's sweep when it is due, every ``tick_s``, without waiting for
        the sweeps still running; on ``stop`` the running sweeps are cancelled (a sweep that
        did not publish is simply done again by the next one)."""
        try:
            while not stop.is_set():
                self._start(stop)
                await sleep_or_stop(stop, tick_s)
        finally:
            tasks = list(self.running.values())
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, conn_id: str) -> None:
        """One connection's sweep; never raises (but for cancellation)."""
        async with self._gate:
            conn = self.connections.get(conn_id)
            creds = self.connections.credentials(conn) if conn is not None else None
            if conn is None or creds is None:
                self.schedule.done(conn_id, self.clock())
                return
            try:
                row = await self.sweeper.sweep(conn, creds)
            except TokenRejected:
                log.warning(
                    "sweep refused: sentry rejected the token; refresh requested, next turn"
                    " retries",
                    extra={"connection_id": conn_id},
                )
                DEPENDENCIES.up(POSTGRES)  # the refused sweep was recorded
                try:
                    await self.connections.request_refresh(conn_id, creds)
                except Exception as exc:  # the broker away: asked again at the next refusal
                    log.warning(
                        "token refresh request not sent",
                        extra={"connection_id": conn_id, "error": type(exc).__name__},
                    )
                self.schedule.done(conn_id, self.clock())
                return
            except Exception as exc:
                FAILED.labels(type(exc).__name__).inc()
                wait = self.schedule.failed(conn_id, self.clock())
                log.error(
                    "sweep failed; this connection is tried again later, the others go on",
                    extra={
                        "connection_id": conn_id,
                        "error": f"{type(exc).__name__}: {exc}"[:500],
                        "retry_in_s": round(wait, 1),
                    },
                )
                return
            DEPENDENCIES.up(POSTGRES)  # the sweep read the model and recorded itself
            if row is not None:
                DEPENDENCIES.up(KAFKA)  # its observations were acked
                self.swept.append(row)
            self.schedule.done(conn_id, self.clock())
