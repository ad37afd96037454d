"""Pure: when each connection is swept next (every ``interval_s``, jittered by ``jitter``; a
failed sweep is tried again after a backoff that doubles up to the interval)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["Schedule"]


class Schedule:
    def __init__(
        self,
        interval_s: float,
        jitter: float,
        rng: Callable[[], float],
        backoff_s: float | None = None,
        start_delay_s: float = 0.0,
    ) -> None:
        self.interval_s, self.jitter, self.rng = interval_s, jitter, rng
        self.start_delay_s = start_delay_s
        self.backoff_s = interval_s if backoff_s is None else min(backoff_s, interval_s)
        self.due: dict[str, float] = {}
        self.failures: dict[str, int] = {}

    def _next(self, now: float, wait_s: float) -> float:
        spread = wait_s * self.jitter
        return now + wait_s - spread + 2 * spread * self.rng()

    def due_now(self, connections: Iterable[str], now: float) -> list[str]:
        """Connections due at ``now``; a connection seen for the first time is due
        ``start_delay_s`` on, within one jittered interval's spread (replicas started together
        do not sweep in step)."""
        out = []
        for c in connections:
            if c not in self.due:
                spread = self.interval_s * self.jitter * self.rng()
                self.due[c] = now + self.start_delay_s + spread
            if self.due[c] <= now:
                out.append(c)
        return out

    def done(self, connection_id: str, now: float) -> None:
        self.failures.pop(connection_id, None)
        self.due[connection_id] = self._next(now, self.interval_s)

    def failed(self, connection_id: str, now: float) -> float:
        """A failed sweep: the connection is due again after ``backoff_s``, doubled by each
        failure in a row, never later than one interval (jittered); the wait chosen."""
        n = self.failures.get(connection_id, 0) + 1
        self.failures[connection_id] = n
        wait = min(self.interval_s, self.backoff_s * float(2 ** min(n - 1, 30)))
        self.due[connection_id] = self._next(now, wait)
        return wait
