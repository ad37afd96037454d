"""The Sentry client against the stand-in: rate limits, 5xx, slowness, resets, bad tokens; each
behaviour over both HTTP libraries (``HttpxSentryApi``, ``AiohttpSentryApi``)."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from aiohttp import web
from blametrail_common.sentry_api import (
    AiohttpSentryApi,
    Budget,
    GaveUp,
    HttpxSentryApi,
    NotFound,
    RetryPolicy,
    SentryApiError,
    SentryCredentials,
    TokenRejected,
    aiohttp_session,
    backoff_delay,
    endpoint_of,
    is_transient,
    rate_limit_wait,
)
from blametrail_sentry_stub import Fault, StubState, serve

FAST = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, timeout_s=0.5)


def test_backoff_is_jittered_exponential_and_capped() -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=4)
    assert [backoff_delay(n, policy, lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1, 2, 4, 4]
    assert backoff_delay(3, policy, lambda: 0.25) == 0.5


def test_rate_limit_wait_reads_sentry_headers() -> None:
    assert rate_limit_wait({"x-sentry-rate-limit-remaining": "3"}, 100, 200) == 0
    headers = {"x-sentry-rate-limit-remaining": "0", "x-sentry-rate-limit-reset": "103"}
    assert rate_limit_wait(headers, 100, 200) == 3
    assert rate_limit_wait({}, 100, 429) == 1.0
    assert rate_limit_wait({"x-sentry-rate-limit-reset": "junk"}, 100, 429) == 1.0


Api = HttpxSentryApi | AiohttpSentryApi
MakeApi = Callable[[RetryPolicy], Api]


@pytest.fixture(params=["httpx", "aiohttp"])
async def make_api(request: pytest.FixtureRequest) -> AsyncIterator[MakeApi]:
    """Clients of one library (closed after the test)."""
    made: list[Any] = []

    def make(policy: RetryPolicy) -> Api:
        if request.param == "httpx":
            made.append(httpx.AsyncClient())
            return HttpxSentryApi(made[-1], policy)
        made.append(aiohttp_session(connections=75))
        return AiohttpSentryApi(made[-1], policy)

    yield make
    for client in made:
        await (client.aclose() if isinstance(client, httpx.AsyncClient) else client.close())


async def _api_and_creds(
    state: StubState, url: str, make: MakeApi, policy: RetryPolicy = FAST
) -> tuple[Api, SentryCredentials]:
    token = state.add_internal_token("acme")
    return make(policy), SentryCredentials(url, "acme", token)


async def test_fetches_latest_event_and_tags(make_api: MakeApi) -> None:
    state = StubState()
    async with serve(state) as url:
        api, creds = await _api_and_creds(state, url, make_api)
        assert (await api.latest_event(creds, "77"))["groupID"] == "77"
        assert any(t["key"] == "release" for t in await api.issue_tags(creds, "77"))
    assert "TOKEN" not in repr(creds).upper()


async def test_5xx_timeouts_and_resets_are_retried_until_recovery(make_api: MakeApi) -> None:
    state = StubState()
    state.faults += [
        Fault("latest_event", "503"),
        Fault("latest_event", "slow", delay_s=1.0),
        Fault("latest_event", "reset"),
    ]
    async with serve(state) as url:
        api, creds = await _api_and_creds(state, url, make_api)
        assert (await api.latest_event(creds, "5"))["groupID"] == "5"
    assert [r["route"] for r in state.requests].count("latest_event") == 4


async def test_gives_up_after_max_attempts_with_the_reason(make_api: MakeApi) -> None:
    state = StubState()
    state.faults.append(Fault("tags", "500", count=10))
    async with serve(state) as url:
        api, creds = await _api_and_creds(state, url, make_api)
        with pytest.raises(GaveUp, match="gave up after 4 attempts: HTTP 500"):
            await api.issue_tags(creds, "5")


async def test_429_storm_waits_until_reset_then_succeeds(make_api: MakeApi) -> None:
    state = StubState(rate_limit=2, rate_window_s=1)
    async with serve(state) as url:
        policy = RetryPolicy(max_attempts=2, timeout_s=2)
        api, creds = await _api_and_creds(state, url, make_api, policy)
        began = time.monotonic()
        results = [await api.issue_tags(creds, str(i)) for i in range(5)]
        elapsed = time.monotonic() - began
    assert len(results) == 5
    assert elapsed >= 1.0  # five calls at two per second must have waited for at least one reset
    assert sum(1 for r in state.requests if r["route"] == "tags") <= 7  # waited, did not hammer


async def test_401_and_404_are_permanent_and_typed(make_api: MakeApi) -> None:
    state = StubState(template_unknown_issues=False)
    async with serve(state) as url:
        api, creds = await _api_and_creds(state, url, make_api)
        with pytest.raises(NotFound):
            await api.latest_event(creds, "404404")
        paths = [r["path"] for r in state.requests]
        assert paths == [
            "/api/0/organizations/acme/issues/404404/events/latest/",
            "/api/0/issues/404404/events/latest/",
        ]
        with pytest.raises(TokenRejected):
            await api.issue_tags(SentryCredentials(url, "acme", "expired"), "1")


async def test_an_answer_past_the_size_bound_is_refused_unread_and_not_retried(
    make_api: MakeApi,
) -> None:
    """A faulty or hostile server's endless answer is not held in memory: the read stops at
    ``max_response_bytes`` and the call fails for good (retrying would read it again)."""
    state = StubState()
    state.faults.append(Fault("tags", "huge", count=5, size_bytes=3 * 1024 * 1024))
    async with serve(state) as url:
        policy = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_response_bytes=1024 * 1024)
        api, creds = await _api_and_creds(state, url, make_api, policy)
        with pytest.raises(SentryApiError, match="over 1048576 bytes") as raised:
            await api.issue_tags(creds, "1")
        assert not is_transient(raised.value)
        assert [r["route"] for r in state.requests] == ["tags"]
        state.faults.clear()
        assert await api.issue_tags(creds, "1")  # an answer within the bound reads as before


async def test_403_is_an_answer_not_an_outage_and_is_not_retried(make_api: MakeApi) -> None:
    state = StubState()
    async with serve(state) as url:
        api, creds = await _api_and_creds(
            state, url, make_api
        )  # a token of acme, asking about globex
        foreign = SentryCredentials(url, "globex", creds.token)
        with pytest.raises(SentryApiError, match="403") as raised:
            await api.issue_tags(foreign, "1")
    assert not is_transient(raised.value)
    assert [r["route"] for r in state.requests] == ["tags"]  # once: FAST would try four times


def test_endpoint_of_wildcards_ids_so_one_endpoint_is_one_budget() -> None:
    latest = "/api/0/organizations/acme/issues/{}/events/latest/"
    assert endpoint_of("GET", latest.format(1)) == endpoint_of("GET", latest.format(99))
    assert (
        endpoint_of("GET", latest.format(1))
        == "GET /api/0/organizations/acme/issues/*/events/latest/"
    )
    tags = "/api/0/organizations/acme/issues/1/tags/"
    assert endpoint_of("GET", tags) != endpoint_of("GET", latest.format(1))
    ext = "/api/0/sentry-app-installations/9f3e2a10-77/external-issues/"
    assert endpoint_of("POST", ext) == "POST /api/0/sentry-app-installations/*/external-issues/"
    assert endpoint_of("GET", tags + "?cursor=0:100:0") == endpoint_of("GET", tags)


def test_budget_learns_the_window_and_the_concurrent_limit_from_the_headers() -> None:
    budget = Budget(ceiling=4)
    headers = {
        "x-sentry-rate-limit-remaining": "10",
        "x-sentry-rate-limit-reset": "101",
        "x-sentry-rate-limit-concurrentlimit": "9",
        "x-sentry-rate-limit-concurrentremaining": "5",
    }
    for _ in range(4):  # a ceiling's worth of answers with slots free: one slot more
        assert budget.try_start()
        budget.learn(headers, 200, 100.0)
        budget.finish()
    # 10 left when Sentry last answered, less the 3 calls sent since (counted here, not there)
    assert (budget.cap, budget.ceiling, budget.remaining) == (9, 5, 7)
    for _ in range(5):
        assert budget.try_start()
    assert not budget.try_start()  # the ceiling, not the window, stops the sixth
    assert budget.remaining == 2
    none_free = {**headers, "x-sentry-rate-limit-concurrentremaining": "0"}
    for _ in range(12):
        budget.learn(none_free, 200, 100.1)
    assert budget.ceiling == 5  # nothing free (other workers hold the rest): no growth
    budget.learn({**headers, "x-sentry-rate-limit-remaining": "0"}, 200, 100.2)
    assert budget.remaining == 0  # Sentry counted calls of others too: the lower count wins
    budget.learn({**headers, "x-sentry-rate-limit-remaining": "3"}, 200, 100.3)
    assert budget.remaining == 0  # an answer from earlier in the window changes nothing
    assert budget.wait_s(100.5) == pytest.approx(0.5)  # spent: wait for the next window
    assert budget.wait_s(101.0) == 0.0
    assert budget.remaining is None  # a new window: unknown until Sentry answers
    budget.learn(none_free, 429, 101.1)
    assert budget.ceiling == 2  # a concurrency 429 halves the ceiling, and holds nothing
    assert budget.wait_s(101.1) == 0.0
    budget.learn(none_free, 429, 101.1)
    assert budget.ceiling == 2  # not again for calls sent before the cut
    budget.learn(
        {**headers, "x-sentry-rate-limit-remaining": "0", "x-sentry-rate-limit-reset": "102"},
        429,
        101.2,
    )
    assert budget.blocked_until == pytest.approx(102.0)  # a rate 429 holds until Reset
    assert budget.ceiling == 2


def test_budget_far_below_a_free_limit_grows_by_one_per_answer() -> None:
    budget = Budget(ceiling=2)
    headers = {
        "x-sentry-rate-limit-concurrentlimit": "25",
        "x-sentry-rate-limit-concurrentremaining": "20",
    }
    for _ in range(6):
        budget.learn(headers, 200, 100.0)
    assert budget.ceiling == 8  # 20 free is over twice the ceiling up to 9
    budget.learn(headers, 200, 100.0)
    budget.learn(headers, 200, 100.0)
    assert budget.ceiling == 10
    for _ in range(10):
        budget.learn(headers, 200, 100.0)
    assert budget.ceiling == 11  # then 20 free is under twice 11: one per round trip


async def test_concurrency_rises_to_sentrys_limit_without_a_single_429(make_api: MakeApi) -> None:
    state = StubState(concurrent_limit=10, latency_s=0.05)
    async with serve(state) as url:
        api, creds = await _api_and_creds(state, url, make_api, RetryPolicy(timeout_s=5))
        results = await asyncio.gather(*(api.issue_tags(creds, str(i)) for i in range(150)))
    assert len(results) == 150
    budget = api.budget("acme", "GET", "/api/0/organizations/acme/issues/1/tags/")
    assert budget.cap == 10
    assert budget.ceiling == 10  # from 4 (RetryPolicy's start) up to the limit Sentry named
    assert state.limited == {}  # never above it


async def test_two_workers_sharing_an_organizations_slots_back_off_instead_of_storming(
    make_api: MakeApi,
) -> None:
    state = StubState(concurrent_limit=8, latency_s=0.05)
    async with serve(state) as url:
        first, creds = await _api_and_creds(state, url, make_api, RetryPolicy(timeout_s=5))
        second = make_api(RetryPolicy(timeout_s=5))
        calls = [api.issue_tags(creds, str(i)) for i in range(150) for api in (first, second)]
        results = await asyncio.gather(*calls)
    assert len(results) == 300  # every call answered
    tags = sum(1 for r in state.requests if r["route"] == "tags")
    assert state.limited.get("concurrent", 0) <= 0.1 * tags  # a few probes, not a 429 storm
    assert state.limited.get("rate", 0) == 0


async def test_a_spent_window_waits_for_reset_instead_of_sending_into_429s(
    make_api: MakeApi,
) -> None:
    state = StubState(rate_limit=25, rate_window_s=1)
    async with serve(state) as url:
        api, creds = await _api_and_creds(state, url, make_api, RetryPolicy(timeout_s=5))
        began = time.monotonic()
        results = await asyncio.gather(*(api.issue_tags(creds, str(i)) for i in range(70)))
        elapsed = time.monotonic() - began
    assert len(results) == 70
    assert elapsed >= 1.0  # 70 calls at 25 a window span at least three windows
    # Blind calls only at a window's start, before its first answer: at most the ceiling each.
    assert state.limited.get("rate", 0) <= 3 * 10
    assert sum(1 for r in state.requests if r["route"] == "tags") <= 70 + 3 * 10


async def test_headers_out_gives_the_answers_headers_by_lower_case_name(make_api: MakeApi) -> None:
    state = StubState()
    async with serve(state) as url:
        api, creds = await _api_and_creds(state, url, make_api)
        headers: dict[str, str] = {}
        page = await api.call("GET", creds, "/api/0/organizations/acme/issues/", None, headers)
    assert isinstance(page, list)
    assert 'rel="next"' in headers["link"]  # cursor pagination (the reconciler's)
    assert int(headers["x-sentry-rate-limit-remaining"]) >= 0


async def test_a_call_waiting_for_a_pooled_connection_is_not_timed_out_by_the_wait() -> None:
    """The timeout bounds Sentry's answer, not our own queue for a connection: three calls
    through one connection, 0.3 s each, all answer within a 0.5 s timeout (a total of 0.5 s
    from the call's start would time the third out after its 0.6 s in the queue)."""
    state = StubState(latency_s=0.3)
    policy = RetryPolicy(max_attempts=1, timeout_s=0.5)
    async with serve(state) as url, aiohttp_session(connections=1) as session:
        api = AiohttpSentryApi(session, policy)
        creds = SentryCredentials(url, "acme", state.add_internal_token("acme"))
        results = await asyncio.gather(*(api.issue_tags(creds, str(i)) for i in range(3)))
    assert len(results) == 3
    assert [r["route"] for r in state.requests] == ["tags"] * 3  # none timed out and retried


@contextlib.asynccontextmanager
async def _redirecting(
    status: int, cross_origin: bool
) -> AsyncIterator[tuple[str, list[tuple[str, str]]]]:
    """A server answering ``status`` to every call, sending it on to ``/moved`` + its path (on
    its own origin, or as ``localhost`` on another), which answers 200 to a call with a token
    and 401 to one without; yields its URL and each request's method and path."""
    seen: list[tuple[str, str]] = []

    class Redirect(web.HTTPException):
        status_code = status

    async def redirect(request: web.Request) -> web.Response:
        seen.append((request.method, request.path))
        if request.path.startswith("/moved/"):
            if "Authorization" not in request.headers:
                return web.json_response({"detail": "Invalid token"}, status=401)
            return web.json_response([] if request.method == "GET" else {"moved": True})
        origin = f"http://localhost:{request.url.port}" if cross_origin else ""
        raise Redirect(headers={"Location": f"{origin}/moved{request.path}"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "cross_origin"),
    [(301, False), (302, False), (303, False), (307, False), (308, False), (302, True)],
)
async def test_a_redirect_is_not_followed_and_is_retried_as_httpx_did(
    make_api: MakeApi, status: int, cross_origin: bool
) -> None:
    """Neither client follows a 3xx (that would carry the token on, turn a POST into a GET or,
    cross-origin, drop the token and end in a 401: a wrongful TokenRejected): a 3xx is Sentry
    not answering as its API does, retried, then GaveUp."""
    async with _redirecting(status, cross_origin) as (url, seen):
        api = make_api(FAST)
        creds = SentryCredentials(url, "acme", "sntrys_token")
        with pytest.raises(GaveUp, match=f"gave up after 4 attempts: HTTP {status}"):
            await api.issue_tags(creds, "1")
        with pytest.raises(GaveUp, match=f"HTTP {status}"):
            await api.create_external_issue(creds, "inst-1", {"issueId": "1"})
    tags = "/api/0/organizations/acme/issues/1/tags/"
    ext = "/api/0/sentry-app-installations/inst-1/external-issues/"
    assert seen == [("GET", tags)] * 4 + [("POST", ext)] * 4  # never on to /moved/


def test_the_aiohttp_client_takes_its_proxy_from_the_environment_as_httpx_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from blametrail_common.sentry_api import _env_proxy

    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "sentry.internal")
    _env_proxy.cache_clear()
    try:
        assert _env_proxy("https://sentry.io") == "http://proxy.internal:3128"
        assert _env_proxy("https://sentry.internal") is None
        assert _env_proxy("http://127.0.0.1:8090") is None  # no HTTP_PROXY named
    finally:
        _env_proxy.cache_clear()
