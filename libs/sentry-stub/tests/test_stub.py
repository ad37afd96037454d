"""The stand-in behaves like the documented Sentry API, including its failures."""

import asyncio
import base64
import hashlib
import hmac
import time

import httpx
import orjson
import pytest
from blametrail_sentry_stub import Fault, StubState, serve

LATEST = "/api/0/organizations/acme/issues/5912345678/events/latest/"


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_latest_event_and_tags_need_a_valid_token() -> None:
    state = StubState()
    token = state.add_internal_token("acme")
    async with serve(state) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get(LATEST)).status_code == 401
        assert (await client.get(LATEST, headers=_auth("wrong"))).status_code == 401
        event = await client.get(LATEST, headers=_auth(token))
        assert event.status_code == 200
        assert event.json()["groupID"] == "5912345678"
        assert event.headers["X-Sentry-Rate-Limit-Limit"] == "1000"
        tags = await client.get(
            "/api/0/organizations/acme/issues/5912345678/tags/", headers=_auth(token)
        )
        assert {t["key"] for t in tags.json()} >= {"environment", "release"}
        other = await client.get(
            "/api/0/organizations/acme/issues/42/events/latest/", headers=_auth(token)
        )
        assert other.json()["groupID"] == "42"
        foreign = await client.get(
            "/api/0/organizations/globex/issues/42/tags/", headers=_auth(token)
        )
        assert foreign.status_code == 403


async def test_rate_limit_answers_429_with_reset_and_no_retry_after() -> None:
    state = StubState(rate_limit=2, rate_window_s=60)
    token = state.add_internal_token("acme")
    async with serve(state) as url, httpx.AsyncClient(base_url=url, headers=_auth(token)) as client:
        codes = [(await client.get(LATEST)).status_code for _ in range(3)]
        asked = time.time()  # the reset is after the moment it was asked, not after "now"
        limited = await client.get(LATEST)
    assert codes == [200, 200, 429]
    assert "Retry-After" not in limited.headers
    assert limited.headers["X-Sentry-Rate-Limit-Remaining"] == "0"
    assert int(limited.headers["X-Sentry-Rate-Limit-Reset"]) > asked
    assert "too frequently" in limited.json()["detail"]


async def test_faults_apply_per_route_then_recover() -> None:
    state = StubState()
    token = state.add_internal_token("acme")
    state.faults += [Fault("latest_event", "503", count=2), Fault("tags", "slow", delay_s=0.3)]
    async with serve(state) as url, httpx.AsyncClient(base_url=url, headers=_auth(token)) as client:
        assert [(await client.get(LATEST)).status_code for _ in range(3)] == [503, 503, 200]
        began = time.monotonic()
        assert (await client.get("/api/0/organizations/acme/issues/1/tags/")).status_code == 200
        assert time.monotonic() - began >= 0.3
        state.faults.append(Fault("latest_event", "reset"))
        with pytest.raises(httpx.TransportError):
            await client.get(LATEST)
        assert (await client.get(LATEST)).status_code == 200
        await client.post("/_stub/faults", json={"route": "*", "kind": "401"})
        assert (await client.get(LATEST)).status_code == 401


async def test_grant_exchange_is_single_use_and_expires() -> None:
    state = StubState()
    inst, code = state.add_installation("acme", "cid", "csecret")
    _, stale_code = state.add_installation("acme", "cid", "csecret", uuid=inst.uuid)
    path = f"/api/0/sentry-app-installations/{inst.uuid}/authorizations/"
    body = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": "cid",
        "client_secret": "csecret",
    }
    async with serve(state) as url, httpx.AsyncClient(base_url=url) as client:
        first = await client.post(path, json=body)
        assert first.status_code == 201
        assert set(first.json()) >= {"token", "refreshToken", "expiresAt"}
        again = await client.post(path, json=body)
        assert again.status_code == 401
        assert again.json()["detail"] == "Could not find grant for given code"
        await client.post("/_stub/clock", json={"advance_s": 601})
        late = await client.post(path, json={**body, "code": stale_code})
        assert late.json()["detail"] == "Grant has already expired"
        wrong = await client.post(path, json={**body, "client_secret": "nope"})
        assert wrong.status_code == 401


async def test_tokens_expire_after_8h_and_refresh_is_single_use() -> None:
    state = StubState()
    inst, code = state.add_installation("acme", "cid", "csecret")
    path = f"/api/0/sentry-app-installations/{inst.uuid}/authorizations/"
    creds = {"client_id": "cid", "client_secret": "csecret"}
    async with serve(state) as url, httpx.AsyncClient(base_url=url) as client:
        pair = (
            await client.post(
                path, json={"grant_type": "authorization_code", "code": code, **creds}
            )
        ).json()
        assert (await client.get(LATEST, headers=_auth(pair["token"]))).status_code == 200
        refresh = {"grant_type": "refresh_token", "refresh_token": pair["refreshToken"], **creds}
        new = (await client.post(path, json=refresh)).json()
        assert (await client.get(LATEST, headers=_auth(pair["token"]))).status_code == 401
        assert (await client.post(path, json=refresh)).status_code == 401
        assert (await client.get(LATEST, headers=_auth(new["token"]))).status_code == 200
        await client.post("/_stub/clock", json={"advance_s": 8 * 3600 + 1})
        assert (await client.get(LATEST, headers=_auth(new["token"]))).status_code == 401


def _jwt(client_id: str, secret: str, exp: float) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    head = b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    claims = b64(
        orjson.dumps({"iss": client_id, "sub": client_id, "iat": exp - 60, "exp": exp, "jti": "1"})
    )
    sig = hmac.new(secret.encode(), f"{head}.{claims}".encode(), hashlib.sha256).digest()
    return f"{head}.{claims}.{b64(sig)}"


async def test_jwt_bearer_recovers_a_lost_refresh() -> None:
    state = StubState()
    inst, _ = state.add_installation("acme", "cid", "csecret")
    path = f"/api/0/sentry-app-installations/{inst.uuid}/authorizations/"
    grant = {"grant_type": "urn:sentry:params:oauth:grant-type:jwt-bearer"}
    async with serve(state) as url, httpx.AsyncClient(base_url=url) as client:
        bad = await client.post(
            path, json=grant, headers=_auth(_jwt("cid", "wrong", time.time() + 60))
        )
        assert bad.status_code == 401
        ok = await client.post(
            path, json=grant, headers=_auth(_jwt("cid", "csecret", time.time() + 60))
        )
        assert ok.status_code == 201
        assert (await client.get(LATEST, headers=_auth(ok.json()["token"]))).status_code == 200


async def test_verify_install_and_external_issue_links() -> None:
    state = StubState()
    inst, _ = state.add_installation("acme", "cid", "csecret")
    token = state.issue_token(inst).token
    base = f"/api/0/sentry-app-installations/{inst.uuid}"
    async with serve(state) as url, httpx.AsyncClient(base_url=url, headers=_auth(token)) as client:
        assert (await client.put(f"{base}/", json={"status": "installed"})).json()[
            "status"
        ] == "installed"
        assert (
            await client.post(f"{base}/external-issues/", json={"issueId": 1})
        ).status_code == 400
        link = await client.post(
            f"{base}/external-issues/",
            json={
                "issueId": 5912345678,
                "webUrl": "http://bt/i/1",
                "project": "PAY",
                "identifier": "1042",
            },
        )
        assert link.status_code == 201
        assert link.json()["displayName"] == "PAY#1042"
        assert (
            await client.delete(f"{base}/external-issues/{link.json()['id']}/")
        ).status_code == 204
        assert (
            await client.delete(f"{base}/external-issues/{link.json()['id']}/")
        ).status_code == 404


async def test_storms_hit_every_request_for_their_duration_and_can_be_ended_over_http() -> None:
    state = StubState()
    token = state.add_internal_token("acme")
    tags = "/api/0/organizations/acme/issues/1/tags/"
    async with serve(state) as url, httpx.AsyncClient(base_url=url, headers=_auth(token)) as client:
        began = await client.post("/_stub/storm", json={"kind": "503", "duration_s": 60})
        assert began.json()["until"] > time.time() + 50
        assert [(await client.get(LATEST)).status_code for _ in range(3)] == [503, 503, 503]
        assert (await client.get(tags)).status_code == 503  # route "*": every route
        assert (await client.delete("/_stub/storm")).json() == {"ended": 1}
        assert (await client.get(LATEST)).status_code == 200

        state.storm("429", duration_s=0.5, route="tags")  # a rate-limit storm on one route
        asked = time.time()
        limited = await client.get(tags)
        assert limited.status_code == 429
        assert "Retry-After" not in limited.headers
        assert limited.headers["X-Sentry-Rate-Limit-Remaining"] == "0"
        assert int(limited.headers["X-Sentry-Rate-Limit-Reset"]) > asked
        assert (await client.get(LATEST)).status_code == 200
        await asyncio.sleep(0.6)  # over by itself
        assert (await client.get(tags)).status_code == 200
        state.faults.append(Fault("latest_event", "500"))  # queued faults still work after
        assert (await client.get(LATEST)).status_code == 500


async def test_each_endpoint_has_its_own_window_shared_by_the_organizations_tokens() -> None:
    state = StubState(rate_limit=2, rate_window_s=60)
    first, second = state.add_internal_token("acme"), state.add_internal_token("acme")
    tags = "/api/0/organizations/acme/issues/5912345678/tags/"
    async with serve(state) as url, httpx.AsyncClient(base_url=url) as client:
        latest = [
            (await client.get(LATEST, headers=_auth(t))).status_code for t in (first, second, first)
        ]
        tag = (await client.get(tags, headers=_auth(second))).status_code
    assert latest == [200, 200, 429]  # two tokens of one organization: one caller
    assert tag == 200  # another endpoint: another window
    assert state.limited == {"rate": 1}


async def test_concurrent_limit_answers_429_and_headers_count_requests_in_progress() -> None:
    state = StubState(concurrent_limit=3, latency_s=0.3)
    token = state.add_internal_token("acme")
    async with serve(state) as url, httpx.AsyncClient(base_url=url, headers=_auth(token)) as client:
        answers = await asyncio.gather(*(client.get(LATEST) for _ in range(5)))
        alone = await client.get(LATEST)
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 200, 200, 429, 429]
    limited = [a for a in answers if a.status_code == 429]
    assert all("concurrency" in a.json()["detail"] for a in limited)
    assert all(a.headers["X-Sentry-Rate-Limit-ConcurrentRemaining"] == "0" for a in limited)
    assert int(limited[0].headers["X-Sentry-Rate-Limit-Remaining"]) > 0  # not the rate window
    served = sorted(
        int(a.headers["X-Sentry-Rate-Limit-ConcurrentRemaining"])
        for a in answers
        if a.status_code == 200
    )
    assert served == [0, 1, 2]
    assert alone.headers["X-Sentry-Rate-Limit-ConcurrentLimit"] == "3"
    assert alone.headers["X-Sentry-Rate-Limit-ConcurrentRemaining"] == "2"
    assert state.limited == {"concurrent": 2}
