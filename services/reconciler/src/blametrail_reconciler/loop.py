"""The service's sweep loop: every due connection swept in turn on its jittered schedule.

A sweep Sentry refuses with a 401 asks the token's owner, the control plane's token keeper, for
an early refresh (``oauth-refresh-requests``; an internal token only a person can replace is
logged) and the connection is swept again at its next turn with whatever token
``cp-connections`` holds by then. Any other failure fails the loop (its supervisor logs, backs
off and runs it again) and the connection stays due.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from blametrail_common.resilience import DEPENDENCIES, KAFKA, POSTGRES
from blametrail_common.sentry_api import TokenRejected

from blametrail_reconciler.connections import Connections
from blametrail_reconciler.schedule import Schedule
from blametrail_reconciler.store import SweepRow
from blametrail_reconciler.sweep import Sweeper

__all__ = ["SweepLoop"]

log = logging.getLogger(__name__)


@dataclass
class SweepLoop:
    connections: Connections
    sweeper: Sweeper
    schedule: Schedule
    clock: Callable[[], float] = time.time
    swept: list[SweepRow] = field(default_factory=list, repr=False)
    """The last pass's sweeps (for tests and logs; replaced every pass)."""

    async def once(self, stop: asyncio.Event) -> int:
        """Sweep each connection due now; the number of sweeps attempted."""
        self.swept = []
        attempted = 0
        now = self.clock()
        for conn_id in self.schedule.due_now(
            [c.connection_id for c in self.connections.sweepable()], now
        ):
            if stop.is_set():
                break
            conn = self.connections.get(conn_id)
            creds = self.connections.credentials(conn) if conn is not None else None
            if conn is None or creds is None:
                self.schedule.done(conn_id, now)
                continue
            attempted += 1
            try:
                row = await self.sweeper.sweep(conn, creds)
            except TokenRejected:
                log.warning(
                    "sweep refused: sentry rejected the token; refresh requested, next turn"
                    " retries",
                    extra={"connection_id": conn_id},
                )
                DEPENDENCIES.up(POSTGRES)  # the refused sweep was recorded
                await self.connections.request_refresh(conn_id, creds)
                self.schedule.done(conn_id, self.clock())
                continue
            DEPENDENCIES.up(POSTGRES)  # the sweep read the model and recorded itself
            if row is not None:
                DEPENDENCIES.up(KAFKA)  # its observations were acked
                self.swept.append(row)
            self.schedule.done(conn_id, self.clock())
        return attempted
