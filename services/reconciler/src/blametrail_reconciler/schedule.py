"""Pure: when each connection is swept next (every ``interval_s``, jittered by ``jitter``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["Schedule"]


class Schedule:
    def __init__(self, interval_s: float, jitter: float, rng: Callable[[], float]) -> None:
        self.interval_s, self.jitter, self.rng = interval_s, jitter, rng
        self.due: dict[str, float] = {}

    def _next(self, now: float) -> float:
        spread = self.interval_s * self.jitter
        return now + self.interval_s - spread + 2 * spread * self.rng()

    def due_now(self, connections: Iterable[str], now: float) -> list[str]:
        """Connections due at ``now``; a connection seen for the first time is due within one
        jittered interval's spread (replicas started together do not sweep in step)."""
        out = []
        for c in connections:
            if c not in self.due:
                self.due[c] = now + self.interval_s * self.jitter * self.rng()
            if self.due[c] <= now:
                out.append(c)
        return out

    def done(self, connection_id: str, now: float) -> None:
        self.due[connection_id] = self._next(now)
