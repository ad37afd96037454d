"""The Sentry client against the stand-in: rate limits, 5xx, slowness, resets, bad tokens."""

import time

import httpx
import pytest
from blametrail_common.sentry_api import (
    GaveUp,
    HttpxSentryApi,
    NotFound,
    RetryPolicy,
    SentryApiError,
    SentryCredentials,
    TokenRejected,
    backoff_delay,
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


async def _api_and_creds(
    state: StubState, url: str, policy: RetryPolicy = FAST
) -> tuple[HttpxSentryApi, SentryCredentials]:
    token = state.add_internal_token("acme")
    return HttpxSentryApi(httpx.AsyncClient(), policy), SentryCredentials(url, "acme", token)


async def test_fetches_latest_event_and_tags() -> None:
    state = StubState()
    async with serve(state) as url:
        api, creds = await _api_and_creds(state, url)
        assert (await api.latest_event(creds, "77"))["groupID"] == "77"
        assert any(t["key"] == "release" for t in await api.issue_tags(creds, "77"))
    assert "TOKEN" not in repr(creds).upper()


async def test_5xx_timeouts_and_resets_are_retried_until_recovery() -> None:
    state = StubState()
    state.faults += [
        Fault("latest_event", "503"),
        Fault("latest_event", "slow", delay_s=1.0),
        Fault("latest_event", "reset"),
    ]
    async with serve(state) as url:
        api, creds = await _api_and_creds(state, url)
        assert (await api.latest_event(creds, "5"))["groupID"] == "5"
    assert [r["route"] for r in state.requests].count("latest_event") == 4


async def test_gives_up_after_max_attempts_with_the_reason() -> None:
    state = StubState()
    state.faults.append(Fault("tags", "500", count=10))
    async with serve(state) as url:
        api, creds = await _api_and_creds(state, url)
        with pytest.raises(GaveUp, match="gave up after 4 attempts: HTTP 500"):
            await api.issue_tags(creds, "5")


async def test_429_storm_waits_until_reset_then_succeeds() -> None:
    state = StubState(rate_limit=2, rate_window_s=1)
    async with serve(state) as url:
        api, creds = await _api_and_creds(state, url, RetryPolicy(max_attempts=2, timeout_s=2))
        began = time.monotonic()
        results = [await api.issue_tags(creds, str(i)) for i in range(5)]
        elapsed = time.monotonic() - began
    assert len(results) == 5
    assert elapsed >= 1.0  # five calls at two per second must have waited for at least one reset
    assert sum(1 for r in state.requests if r["route"] == "tags") <= 7  # waited, did not hammer


async def test_401_and_404_are_permanent_and_typed() -> None:
    state = StubState(template_unknown_issues=False)
    async with serve(state) as url:
        api, creds = await _api_and_creds(state, url)
        with pytest.raises(NotFound):
            await api.latest_event(creds, "404404")
        paths = [r["path"] for r in state.requests]
        assert paths == [
            "/api/0/organizations/acme/issues/404404/events/latest/",
            "/api/0/issues/404404/events/latest/",
        ]
        with pytest.raises(TokenRejected):
            await api.issue_tags(SentryCredentials(url, "acme", "expired"), "1")


async def test_403_is_an_answer_not_an_outage_and_is_not_retried() -> None:
    state = StubState()
    async with serve(state) as url:
        api, creds = await _api_and_creds(state, url)  # a token of acme, asking about globex
        foreign = SentryCredentials(url, "globex", creds.token)
        with pytest.raises(SentryApiError, match="403") as raised:
            await api.issue_tags(foreign, "1")
    assert not is_transient(raised.value)
    assert [r["route"] for r in state.requests] == ["tags"]  # once: FAST would try four times
