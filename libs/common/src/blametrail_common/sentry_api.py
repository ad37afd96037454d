"""The Sentry web API as BlameTrail's workers call it, with Sentry's rate limits honoured.

Shared by every process that calls Sentry on a connection's behalf (the enricher; write-back and
reconciliation), so each obeys the same budget rules. Install with ``blametrail-common[sentry]``.
One behaviour over either HTTP library: :class:`HttpxSentryApi` (an ``httpx.AsyncClient``) or
:class:`AiohttpSentryApi` (an ``aiohttp.ClientSession``, :func:`aiohttp_session`: about a
tenth of httpx's CPU per call on the stand-in, bench/enrich; httpcore's pool also checks every
pooled connection on each call, so its cost grows with the pool).

Contract of every call: returns the decoded JSON, or raises one of
:class:`TokenRejected` (401: ask the token owner for a refresh), :class:`NotFound` (404: the
issue is gone; permanent), :class:`SentryApiError` itself (403 and other 4xx: Sentry answered
no; an answer over ``RetryPolicy.max_response_bytes``, read no further: permanent) or :class:`GaveUp` (retries exhausted on 5xx/timeouts/429s: Sentry did not
answer; the only *transient* outcome, see :func:`is_transient`).

The budget (:class:`Budget`, one per organization and endpoint, as Sentry counts them): Sentry
answers every call with ``X-Sentry-Rate-Limit-Limit``/``-Remaining``/``-Reset`` (requests left in
its fixed window, and when the next one starts) and ``-ConcurrentLimit``/``-ConcurrentRemaining``
(requests in progress allowed, and left). Calls start at ``RetryPolicy.concurrency_per_org`` in
flight and grow by one about once a round trip (a ceiling's worth of answers) while
``ConcurrentRemaining`` says slots are free (faster while far more are free), up to the
``ConcurrentLimit`` Sentry names; a concurrency 429 halves them, once a round trip (other
processes of ours, write-back or reconciliation workers, share the organization's slots). No call is sent once the window's requests are
spent (counted here, corrected by each answer's ``Remaining``) until ``Reset``; a rate 429 holds
the endpoint until ``Reset`` too (Sentry sends no ``Retry-After``). So a storm of incidents
spends the budget Sentry grants and is never a 429 storm of our own making.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import re
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import aiohttp
import httpx
import orjson

__all__ = [
    "AiohttpSentryApi",
    "Budget",
    "GaveUp",
    "HttpxSentryApi",
    "NotFound",
    "RetryPolicy",
    "SentryApi",
    "SentryApiError",
    "SentryCredentials",
    "TokenRejected",
    "aiohttp_session",
    "backoff_delay",
    "endpoint_of",
    "is_transient",
    "rate_limit_wait",
]


class SentryApiError(Exception):
    """A Sentry API call failed for good; ``str()`` is the reason recorded with the failure."""


class TokenRejected(SentryApiError):
    pass


class NotFound(SentryApiError):
    pass


class GaveUp(SentryApiError):
    pass


def is_transient(exc: SentryApiError) -> bool:
    """Pure: did Sentry fail to answer (an outage, worth retrying later), rather than answer no?"""
    return isinstance(exc, GaveUp)


@dataclass(frozen=True, slots=True)
class SentryCredentials:
    base_url: str
    org_slug: str
    token: str

    def __repr__(self) -> str:  # never print the token
        return f"SentryCredentials(base_url={self.base_url!r}, org_slug={self.org_slug!r})"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay_s: float = 0.2
    max_delay_s: float = 10.0
    max_rate_limit_wait_s: float = 120.0
    timeout_s: float = 5.0
    concurrency_per_org: int = 4
    """Calls in flight per organization and endpoint before Sentry named its concurrent limit
    (then :class:`Budget` adapts up to that limit)."""
    max_response_bytes: int = 16 * 1024 * 1024
    """An answer's body is read up to this (an event with every frame's context and 100
    breadcrumbs is well under 1 MB): a larger one is refused, not held in memory."""


class SentryApi(Protocol):
    """What the enricher needs from Sentry (other callers use :meth:`HttpxSentryApi.call`, or
    :class:`AiohttpSentryApi`'s)."""

    async def latest_event(self, creds: SentryCredentials, issue_id: str) -> dict[str, Any]: ...

    async def issue_tags(self, creds: SentryCredentials, issue_id: str) -> list[Any]: ...


def backoff_delay(attempt: int, policy: RetryPolicy, rng: Callable[[], float]) -> float:
    """Full-jitter exponential backoff before retry number ``attempt`` (1-based)."""
    return rng() * min(policy.max_delay_s, policy.base_delay_s * 2.0 ** (attempt - 1))


def rate_limit_wait(headers: Mapping[str, str], now: float, status: int) -> float:
    """Seconds to hold calls to this organization, from Sentry's rate-limit headers."""
    remaining, reset = (
        headers.get("x-sentry-rate-limit-remaining"),
        headers.get("x-sentry-rate-limit-reset"),
    )
    if status != 429 and remaining != "0":
        return 0.0
    try:
        return max(float(reset) - now, 0.0) if reset else 1.0
    except ValueError:
        return 1.0


_ID_SEGMENT = re.compile(r"[^/]*\d[^/]*")


def endpoint_of(method: str, path: str) -> str:
    """Pure: the endpoint a call counts against (Sentry limits each endpoint apart): the method
    and the path with every segment holding a digit (issue ids, installation uuids) wildcarded."""
    head, _, rest = path.split("?", 1)[0].partition("/api/0/")
    return f"{method} {head}{_}{_ID_SEGMENT.sub('*', rest)}"


def _int(headers: Mapping[str, str], name: str) -> int | None:
    try:
        return int(headers[name])
    except (KeyError, ValueError):
        return None


@dataclass
class Budget:
    """What Sentry grants one organization on one endpoint, learnt from its answers; the calls
    in flight against it. Pure bookkeeping (the waiting is :meth:`HttpxSentryApi.call`'s)."""

    ceiling: int
    cap: int | None = None  # X-Sentry-Rate-Limit-ConcurrentLimit, once told
    in_flight: int = 0
    remaining: int | None = None  # requests left in the window ending at ``reset_at``
    reset_at: float = 0.0
    blocked_until: float = 0.0
    grown: int = 0  # answers since the ceiling last grew
    since_cut: int = 0  # answers since it was last cut
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)

    def wait_s(self, now: float) -> float:
        """Seconds before a call may be sent for want of requests (not of slots)."""
        if now >= self.reset_at:
            self.remaining = None  # a new window: Sentry's next answer tells what is left
        spent = self.remaining is not None and self.remaining <= 0
        return max(self.blocked_until - now, (self.reset_at - now) if spent else 0.0, 0.0)

    def try_start(self) -> bool:
        if self.in_flight >= self.ceiling:
            return False
        self.in_flight += 1
        if self.remaining is not None:
            self.remaining -= 1
        return True

    def finish(self) -> None:
        self.in_flight -= 1
        for _ in range(self.ceiling - self.in_flight):  # the ceiling may have risen meanwhile
            self.wake()

    def wake(self) -> None:
        """Let the longest-waiting call try for a slot again."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def learn(self, headers: Mapping[str, str], status: int, now: float) -> None:
        """Take in one answer's rate-limit headers (``status`` 429: Sentry said no)."""
        self.since_cut += 1
        remaining = _int(headers, "x-sentry-rate-limit-remaining")
        reset = _int(headers, "x-sentry-rate-limit-reset")
        cap = _int(headers, "x-sentry-rate-limit-concurrentlimit")
        free = _int(headers, "x-sentry-rate-limit-concurrentremaining")
        if remaining is not None and reset is not None and reset >= self.reset_at:
            if reset > self.reset_at:  # a newer window; calls still in flight may land in it
                self.reset_at, self.remaining = float(reset), remaining - (self.in_flight - 1)
            else:
                known = self.remaining
                self.remaining = remaining if known is None else min(known, remaining)
        if cap is not None and cap > 0:
            self.cap = cap
            self.ceiling = min(self.ceiling, cap)
        if status == 429:
            hold = rate_limit_wait(headers, now, status)
            if remaining is not None and remaining > 0:  # the concurrency variant
                if self.since_cut >= self.ceiling:  # once a round trip: the rest were sent
                    self.ceiling, self.since_cut = max(1, self.ceiling // 2), 0  # before it
            else:
                self.blocked_until = max(self.blocked_until, now + (hold or 1.0))
        elif remaining == 0 and reset is not None:
            self.blocked_until = max(self.blocked_until, float(reset))
        elif self.cap is not None and self.ceiling < self.cap and (free is None or free >= 2):
            # One slot more per ceiling's worth of answers (about once a round trip) while
            # Sentry says slots are free; one per answer while over twice our ceiling is free
            # (a start far below the limit). ConcurrentRemaining is a noisy sign (calls on
            # the wire count as ours, not as Sentry's), so growth is slow and a 429 cuts fast.
            self.grown += 1
            if self.grown >= self.ceiling or (free is not None and free >= 2 * self.ceiling):
                self.ceiling, self.grown = self.ceiling + 1, 0


ClientT = TypeVar("ClientT")
_Sent = tuple[int, Mapping[str, str], bytes]
"""An answer: status, headers (case-insensitive), body."""


@dataclass
class _BudgetedSentryApi(Generic[ClientT]):
    """:class:`SentryApi` and :meth:`call` over ``client``, of one HTTP library (a subclass's
    :meth:`_send` makes the requests); clock, sleep and jitter injectable for tests."""

    client: ClientT
    policy: RetryPolicy = RetryPolicy()
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: Callable[[], float] = random.random
    _budgets: dict[tuple[str, str], Budget] = field(default_factory=dict)

    async def latest_event(self, creds: SentryCredentials, issue_id: str) -> dict[str, Any]:
        """Org-scoped path first; the unscoped one if the org path does not know the issue."""
        try:
            found = await self._get(
                creds, f"/api/0/organizations/{creds.org_slug}/issues/{issue_id}/events/latest/"
            )
        except NotFound:
            found = await self._get(creds, f"/api/0/issues/{issue_id}/events/latest/")
        if not isinstance(found, dict):
            raise GaveUp(f"latest event of issue {issue_id}: expected an object")
        return found

    async def issue_tags(self, creds: SentryCredentials, issue_id: str) -> list[Any]:
        found = await self._get(
            creds, f"/api/0/organizations/{creds.org_slug}/issues/{issue_id}/tags/"
        )
        if not isinstance(found, list):
            raise GaveUp(f"tags of issue {issue_id}: expected a list")
        return found

    def budget(self, org: str, method: str, path: str) -> Budget:
        """The budget a call of ``method path`` for ``org`` counts against."""
        key = (org, endpoint_of(method, path))
        if key not in self._budgets:
            self._budgets[key] = Budget(ceiling=max(1, self.policy.concurrency_per_org))
        return self._budgets[key]

    async def create_external_issue(
        self, creds: SentryCredentials, installation_uuid: str, body: Mapping[str, str]
    ) -> dict[str, Any]:
        """Show a BlameTrail link on a Sentry issue (``issueId``, ``webUrl``, ``project``,
        ``identifier``); Sentry keeps one per issue and app, so posting again updates it."""
        found = await self.call(
            "POST",
            creds,
            f"/api/0/sentry-app-installations/{installation_uuid}/external-issues/",
            dict(body),
        )
        if not isinstance(found, dict):
            raise GaveUp("external issue: expected an object")
        return found

    async def _get(self, creds: SentryCredentials, path: str) -> Any:
        return await self.call("GET", creds, path)

    async def call(
        self,
        method: str,
        creds: SentryCredentials,
        path: str,
        body: Any = None,
        headers_out: dict[str, str] | None = None,
    ) -> Any:
        """One Sentry API call within its organization's and endpoint's :class:`Budget`, with
        retries and rate-limit holds; the decoded JSON, or one of the errors in the module's
        contract. ``headers_out``, if given, receives the answer's headers (lower-case names),
        e.g. ``link`` for cursor pagination."""
        budget, attempt, waited, last = self.budget(creds.org_slug, method, path), 0, 0.0, ""
        refused = 0
        while True:
            hold = budget.wait_s(self.clock())
            if hold > 0:
                if waited + hold > self.policy.max_rate_limit_wait_s:
                    raise GaveUp(
                        f"{method} {path}: rate limited for over {self.policy.max_rate_limit_wait_s:.0f}s"
                    )
                waited += hold
                await self.sleep(hold)
                continue
            if not budget.try_start():
                waiter = asyncio.get_running_loop().create_future()
                budget.waiters.append(waiter)
                try:
                    await waiter
                except BaseException:
                    if waiter.done() and not waiter.cancelled():
                        budget.wake()  # woken, then cancelled: pass the turn on
                    raise
                continue
            try:
                outcome = await self._once(method, creds, path, body, budget, headers_out)
            finally:
                budget.finish()
            if not isinstance(outcome, _Retry):
                return outcome
            if outcome.counts:
                attempt += 1
                last = outcome.reason
                if attempt >= self.policy.max_attempts:
                    raise GaveUp(f"{method} {path}: gave up after {attempt} attempts: {last}")
                await self.sleep(backoff_delay(attempt, self.policy, self.rng))
            elif outcome.reason.startswith("429 concurrency"):
                # Queue again for a slot of the lowered ceiling at once: sleeping would leave
                # the slot idle for other workers to grow into, and refuse us again.
                refused += 1
                if refused > 10 * self.policy.max_attempts:
                    raise GaveUp(f"{method} {path}: {outcome.reason}, {refused} times")

    async def _once(
        self,
        method: str,
        creds: SentryCredentials,
        path: str,
        body: Any,
        budget: Budget,
        headers_out: dict[str, str] | None = None,
    ) -> Any:
        sent = await self._send(method, creds.base_url.rstrip("/"), path, creds.token, body)
        if isinstance(sent, _Retry):
            return sent
        status, headers, content = sent
        budget.learn(headers, status, self.clock())
        if status in (200, 201):
            if headers_out is not None:
                headers_out.update((k.lower(), v) for k, v in headers.items())
            try:
                return orjson.loads(content)
            except orjson.JSONDecodeError:
                pass  # what orjson refuses and json takes (integers past 64 bits, NaN)
            try:
                return json.loads(content)
            except ValueError:
                return _Retry("200 with a body that is not JSON")
        if status == 429:
            remaining = _int(headers, "x-sentry-rate-limit-remaining")
            kind = "concurrency" if remaining is not None and remaining > 0 else "rate limited"
            return _Retry(f"429 {kind}", counts=False)
        if status == 401:
            raise TokenRejected(f"{method} {path}: 401, token rejected")
        if status == 404:
            raise NotFound(f"{method} {path}: 404")
        if 400 <= status < 500 and status != 408:
            # 400, 403 (no access to the organization or issue), 410...: an answer, not an outage.
            text = content.decode("utf-8", "replace")[:200]
            raise SentryApiError(f"{method} {path}: {status} {text}")
        return _Retry(f"HTTP {status}")

    async def _send(
        self, method: str, base_url: str, path: str, token: str, body: Any
    ) -> _Sent | _Retry:
        """One request and its answer, or why none came (a timeout, the connection lost)."""
        raise NotImplementedError

    async def _bounded(self, method: str, path: str, chunks: AsyncIterator[bytes]) -> bytes:
        """An answer's body, read up to ``max_response_bytes``: past that a permanent error."""
        limit, parts, size = self.policy.max_response_bytes, [], 0
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise SentryApiError(f"{method} {path}: an answer over {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)


class HttpxSentryApi(_BudgetedSentryApi[httpx.AsyncClient]):
    """:class:`SentryApi` over an ``httpx.AsyncClient``."""

    async def _send(
        self, method: str, base_url: str, path: str, token: str, body: Any
    ) -> _Sent | _Retry:
        try:
            async with self.client.stream(
                method,
                base_url + path,
                headers={"Authorization": f"Bearer {token}"},
                json=body,
                timeout=self.policy.timeout_s,
            ) as resp:
                content = await self._bounded(method, path, resp.aiter_bytes())
        except httpx.TimeoutException:
            return _Retry(f"timeout after {self.policy.timeout_s}s")
        except httpx.TransportError as exc:
            return _Retry(f"transport error {type(exc).__name__}")
        return resp.status_code, resp.headers, content


class AiohttpSentryApi(_BudgetedSentryApi[aiohttp.ClientSession]):
    """:class:`SentryApi` over an ``aiohttp.ClientSession`` (e.g. :func:`aiohttp_session`)."""

    async def _send(
        self, method: str, base_url: str, path: str, token: str, body: Any
    ) -> _Sent | _Retry:
        headers = {"Authorization": f"Bearer {token}"}
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            async with self.client.request(
                method,
                base_url + path,
                headers=headers,
                data=data,
                proxy=_env_proxy(base_url),
                timeout=_phase_timeout(self.policy.timeout_s),
                allow_redirects=False,  # as httpx: a 3xx is an answer to retry, not to follow
            ) as resp:
                content = await self._bounded(method, path, resp.content.iter_chunked(1 << 16))
                return resp.status, _joined(resp.headers), content
        except TimeoutError:  # aiohttp's own timeout errors are TimeoutErrors too
            return _Retry(f"timeout after {self.policy.timeout_s}s")
        except aiohttp.ClientError as exc:
            return _Retry(f"transport error {type(exc).__name__}")


def _joined(headers: Mapping[str, str]) -> Mapping[str, str]:
    """A multidict's repeated names joined into one value each, as httpx's headers read."""
    if len({name.lower() for name in headers}) == len(headers):
        return headers
    out: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


@functools.lru_cache(maxsize=8)
def _phase_timeout(timeout_s: float) -> aiohttp.ClientTimeout:
    """``timeout_s`` for each phase, as httpx's: opening a socket (``sock_connect``) and each
    wait for the answer's next bytes (``sock_read``, from the request written on). No ``total``
    and no ``connect``: both count the wait for a free connection of our own pool, so a queue
    of calls would time out while Sentry answers in time. (Not bounded, then: that wait, as
    long as the calls ahead of it, each bounded; and a DNS lookup, cached 10 s by aiohttp.)"""
    return aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)


@functools.lru_cache(maxsize=64)
def _env_proxy(base_url: str) -> str | None:
    """The proxy the environment names for ``base_url`` (``HTTPS_PROXY``, ``NO_PROXY``...), as
    httpx takes it; looked up once per Sentry host. (aiohttp's ``trust_env`` would look it up,
    and read ``~/.netrc``, in a thread on every call: two thread hops a call.)"""
    parts = urllib.parse.urlsplit(base_url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy is None or urllib.request.proxy_bypass(parts.netloc):
        return None
    return proxy


def aiohttp_session(connections: int, keepalive_s: float = 5.0) -> aiohttp.ClientSession:
    """A session for :class:`AiohttpSentryApi`: at most ``connections`` open at once (a call
    past them waits for one, a wait its timeout does not count), idle ones kept ``keepalive_s``
    (httpx's default), no cookie jar (Sentry's API needs none). Make it inside the running
    loop; close it (``async with``)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=connections, limit_per_host=0, keepalive_timeout=keepalive_s
        ),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


@dataclass(frozen=True, slots=True)
class _Retry:
    reason: str
    counts: bool = True
