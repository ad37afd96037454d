"""Passwords: argon2id (``argon2-cffi``'s :class:`~argon2.PasswordHasher`) with OWASP's
parameters (19 MiB, 2 passes, 1 lane: :func:`default_hasher`). A hash made with other parameters
(argon2-cffi's defaults, 64 MiB, before issue 17 H2) still verifies and is rehashed at the next
sign-in.

Hashing is CPU- and memory-bound, and signing in is unauthenticated: :class:`HashGate` runs at
most ``concurrency`` of them at once (in threads) with at most ``queue`` callers waiting; one more
is refused at once with :class:`Busy` (503 and ``Retry-After``), so a burst of sign-ins costs
``concurrency`` times one hash's memory, never one per request."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["MIN_LENGTH", "Busy", "HashGate", "Passwords", "default_hasher"]

MIN_LENGTH = 12


def default_hasher() -> PasswordHasher:
    """OWASP's Password Storage Cheat Sheet, argon2id's first line: 19 MiB, 2 passes, 1 lane."""
    return PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


T = TypeVar("T")


class Passwords:
    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or default_hasher()
        self._dummy = self.hasher.hash("an account that does not exist")

    def hash(self, password: str) -> str:
        return self.hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored``; with ``stored`` ``None`` (no such account)
        a dummy hash is checked, so an unknown email costs what a wrong password costs."""
        try:
            return self.hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        """Whether ``stored`` was made with other parameters than today's (rehash on sign-in)."""
        return self.hasher.check_needs_rehash(stored)


class Busy(Exception):
    """Every hashing slot and every place in the queue is taken: try again shortly."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many sign-ins at once; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class HashGate:
    """At most ``concurrency`` hashes at once, at most ``queue`` callers waiting for a slot."""

    def __init__(self, concurrency: int, queue: int, retry_after_s: int = 1) -> None:
        self.concurrency, self.capacity = concurrency, concurrency + queue
        self.retry_after_s = retry_after_s
        self._slots = asyncio.Semaphore(concurrency)
        # Threads of their own: the memory argon2 frees stays in its thread's malloc arena, so
        # hashes in the default executor's threads would keep one hash's memory per thread.
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix="argon2")
        self.admitted = 0
        self.peak_running = 0
        self._running = 0

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """A place among the admitted callers, or :class:`Busy` at once when there is none."""
        if self.admitted >= self.capacity:
            raise Busy(self.retry_after_s)
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a thread once a slot is free (call it inside :meth:`admit`)."""
        async with self._slots:
            self._running += 1
            self.peak_running = max(self.peak_running, self._running)
            work = asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)
            try:
                return await asyncio.shield(work)
            finally:
                if not work.done():  # cancelled: the thread runs on, so its slot stays taken
                    await asyncio.wait({work})
                self._running -= 1
