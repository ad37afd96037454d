"""Self-healing loops: one way to restart a long-running loop after an error, and what readiness knows.

Every long-running loop (the enricher's and the suspects worker's consumers, the projection, the
control plane's relay and background consumers, compacted-table readers) runs through
:func:`supervise`: when an attempt raises, it is started again from scratch (a new consumer, a new
connection) after a capped, full-jitter backoff (:func:`backoff_s`). Offsets are committed only
after effects, so a restarted attempt resumes where its committed offsets (or its Postgres
transaction) say; nothing is lost, redelivered records are absorbed by idempotent effects.

An error is attributed to the dependency that went away (:func:`dependency_of`: Kafka or
Postgres); that dependency is marked down in :data:`DEPENDENCIES` (``blametrail_dependency_up``)
and the readiness checks built from it (:meth:`Dependencies.check`) fail, naming it, until a loop
sees it answer again. Errors that are bugs are retried the same way (no hot spin), logged with
their traceback, and counted like the others in ``blametrail_loop_restarts_total{loop}``.

:data:`DEPENDENCIES` is per process, like the gauge it mirrors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from blametrail_common.metrics import DEPENDENCY_UP, LOOP_RESTARTS

__all__ = [
    "DEPENDENCIES",
    "Backoff",
    "Dependencies",
    "backoff_s",
    "dependency_of",
    "sleep_or_stop",
    "supervise",
]

log = logging.getLogger(__name__)

KAFKA, POSTGRES = "kafka", "postgres"


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter; the attempt count starts over once an attempt
    has run for ``reset_after_s`` (it got somewhere before failing)."""

    base_s: float = 0.5
    cap_s: float = 15.0
    reset_after_s: float = 30.0


def backoff_s(attempt: int, policy: Backoff = Backoff(), rand: float | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): uniform in
    ``[0, min(cap, base * 2**attempt)]`` (full jitter: restarts of many replicas spread out).

    ``rand`` in ``[0, 1)`` is the random draw (given in tests; ``random.random()`` otherwise).
    """
    draw = random.random() if rand is None else rand
    ceiling = min(policy.cap_s, policy.base_s * 2.0 ** min(attempt, 32))
    return float(draw * ceiling)


def dependency_of(exc: BaseException) -> str | None:
    """The dependency an error says went away (``"kafka"``, ``"postgres"``), or None for a bug.

    Follows ``__cause__``/``__context__``: a Kafka or Postgres error wrapped by our code still
    counts as that dependency's.
    """
    kafka = _errors_of("aiokafka.errors", "KafkaError")
    # OperationalError covers psycopg_pool's PoolTimeout too (a pool that cannot connect).
    postgres = _errors_of("psycopg", "OperationalError", "InterfaceError")
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, kafka):
            return KAFKA
        if isinstance(current, postgres):
            return POSTGRES
        current = current.__cause__ or current.__context__
    return None


def _errors_of(module: str, *names: str) -> tuple[type[BaseException], ...]:
    """The exception classes ``names`` of ``module`` if it is loaded, else none.

    Only a loaded library can have raised its own errors, so this module needs neither
    aiokafka nor psycopg installed: a service asks for the extras it uses, not for these.
    """
    loaded = sys.modules.get(module)
    if loaded is None:
        return ()
    return tuple(getattr(loaded, name) for name in names)


class Dependencies:
    """Which dependencies this process's loops currently reach; one flag per dependency.

    Unknown dependencies count as down: readiness waits until a loop has reached them once.
    """

    def __init__(self) -> None:
        self._up: dict[str, bool] = {}

    def set(self, dependency: str, up: bool) -> None:
        if self._up.get(dependency) != up:
            log.log(
                logging.INFO if up else logging.WARNING,
                "dependency up" if up else "dependency away",
                extra={"dependency": dependency},
            )
        self._up[dependency] = up
        DEPENDENCY_UP.labels(dependency).set(1 if up else 0)

    def up(self, dependency: str) -> None:
        self.set(dependency, True)

    def down(self, dependency: str) -> None:
        self.set(dependency, False)

    def is_up(self, dependency: str) -> bool:
        return self._up.get(dependency, False)

    def check(self, dependency: str) -> Callable[[], Awaitable[bool]]:
        """A readiness check (see :mod:`blametrail_common.health`) of ``dependency``."""

        async def check() -> bool:
            return self.is_up(dependency)

        return check


DEPENDENCIES = Dependencies()
"""The process's view of its dependencies, kept by the common loops."""


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def supervise(
    name: str,
    run_once: Callable[[asyncio.Event], Awaitable[None]],
    stop: asyncio.Event,
    *,
    policy: Backoff = Backoff(),
    dependencies: Dependencies = DEPENDENCIES,
    on_state: Callable[[bool], None] | None = None,
) -> None:
    """Run ``run_once(stop)`` until it returns (its work is done, or ``stop`` was set); when it
    raises, count, log, back off and run it again, never giving up while ``stop`` is unset.

    ``on_state(False)`` is called when an attempt failed (the loop is backing off) and
    ``on_state(True)`` when the next attempt starts. Cancellation is never swallowed.
    """
    clock = asyncio.get_running_loop().time
    attempt = 0
    while True:
        if on_state is not None:
            on_state(True)
        started = clock()
        try:
            await run_once(stop)
            return
        except Exception as exc:
            if stop.is_set():
                log.info(
                    "loop ended by an error while stopping",
                    extra={"loop": name, "error": type(exc).__name__},
                )
                return
            if on_state is not None:
                on_state(False)
            if clock() - started >= policy.reset_after_s:
                attempt = 0
            delay = backoff_s(attempt, policy)
            attempt += 1
            dependency = dependency_of(exc)
            if dependency is not None:
                dependencies.down(dependency)
            LOOP_RESTARTS.labels(name).inc()
            log.warning(
                "loop failed; restarting after backoff",
                extra={
                    "loop": name,
                    "error": type(exc).__name__,
                    "dependency": dependency,
                    "attempt": attempt,
                    "delay_s": round(delay, 3),
                },
                exc_info=exc if dependency is None else None,
            )
        await sleep_or_stop(stop, delay)
        if stop.is_set():
            return
