"""The demo step of ``make up``: it reads its own incident by id and waits for it with a deadline.

``make up`` run a second time on a used stack ended with ``IndexError`` (issue 15, defect 9): the
demo read the organization's newest incident, which by then was another one with no ranked
suspect. These tests run the demo's decisions on plain data: no stack is needed.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from blametrail_common.events.incidents import incident_id_for
from blametrail_common.testing import signed_fixture
from blametrail_devstack import demo

ORG = "7d0c4f8e-3a52-4f7e-9a57-1f0e6b8d2c11"
OTHER_ORG = "0b9a1c1e-5d5b-4a8e-8f0e-2c6f3c1d9e22"


def _incident(incident_id: str, *, enriched: bool = True, ranked: bool = True) -> dict[str, Any]:
    return {
        "incident_id": incident_id,
        "title": "ZeroDivisionError: division by zero",
        "service_id": "svc-1",
        "status": "open",
        "enrichment": {"status": "enriched"} if enriched else None,
        "suspects": {
            "ranked": [{"version": "checkout-api@2.14.0", "score": 0.87, "explain": "paths"}]
            if ranked
            else []
        },
    }


class FakeTime:
    """A clock that advances only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_demo_incident_id_is_the_fixture_issue_of_the_demo_tenant() -> None:
    body, _ = signed_fixture(demo.DEMO_FIXTURE)
    issue_id = str(json.loads(body)["data"]["issue"]["id"])
    assert demo.demo_incident_id(ORG, body) == incident_id_for(ORG, "issue", issue_id)
    assert demo.demo_incident_id(ORG, body) != demo.demo_incident_id(OTHER_ORG, body)


def test_a_used_stack_gives_the_demo_its_own_incident_not_the_newest() -> None:
    body, _ = signed_fixture(demo.DEMO_FIXTURE)
    mine = demo.demo_incident_id(ORG, body)
    # The organization's newest incident is another one, without any ranked suspect.
    store = {mine: _incident(mine), "newer": _incident("newer", ranked=False)}
    t = FakeTime()
    found = demo.wait_for_incident(
        mine, lambda: store.get(mine), lambda: None, clock=t.clock, sleep=t.sleep
    )
    assert found["incident_id"] == mine
    assert demo.describe(found)[1].startswith("top suspect: checkout-api@2.14.0 (score 0.87)")


def test_waits_for_enrichment_and_suspects_and_reprocesses_once_when_it_is_missing() -> None:
    t = FakeTime()
    answers: list[dict[str, Any] | None] = [None] * 30  # 15 s without the incident
    answers += [_incident("i", enriched=False, ranked=False), _incident("i", ranked=False)]
    answers += [_incident("i")]
    reprocessed: list[float] = []
    found = demo.wait_for_incident(
        "i",
        lambda: answers.pop(0),
        lambda: reprocessed.append(t.now),
        timeout_s=60,
        clock=t.clock,
        sleep=t.sleep,
    )
    assert found == _incident("i")
    assert answers == []
    assert reprocessed == [10.0]  # once, after 10 s without the incident


def test_the_deadline_names_what_never_came() -> None:
    t = FakeTime()
    with pytest.raises(demo.DemoTimeout) as e:
        demo.wait_for_incident(
            "i",
            lambda: _incident("i", ranked=False),
            lambda: None,
            timeout_s=5,
            clock=t.clock,
            sleep=t.sleep,
        )
    assert "demo incident i: after 5 s still waiting for a ranked suspect deploy" in str(e.value)
    assert 5 <= t.now < 6
    with pytest.raises(demo.DemoTimeout, match="still waiting for the incident itself"):
        demo.wait_for_incident(
            "i", lambda: None, lambda: None, timeout_s=1, clock=t.clock, sleep=t.sleep
        )


def test_missing_parts() -> None:
    assert demo.missing_parts(_incident("i")) == []
    assert demo.missing_parts(None) == ["the incident itself (not in the read model yet)"]
    assert demo.missing_parts(_incident("i", enriched=False, ranked=False)) == [
        "its enrichment",
        "a ranked suspect deploy",
    ]
    assert demo.missing_parts({**_incident("i"), "suspects": None}) == ["a ranked suspect deploy"]


def test_describe_survives_an_incident_without_a_ranked_suspect() -> None:
    lines = demo.describe(_incident("i", ranked=False))
    assert lines[0].startswith("demo incident i: 'ZeroDivisionError")
    assert "enrichment enriched" in lines[0]
    assert lines[1] == "top suspect: none ranked"


async def test_the_demo_installation_is_real_to_the_stand_in() -> None:
    """Links under ``make up`` failed: the stand-in 404ed external issues for an installation
    it never made. Registered as the demo does it, a link with the demo token is made."""
    import asyncio

    import httpx
    from blametrail_sentry_stub import StubState, serve

    stub = StubState()
    stub.add_internal_token("acme", demo.STUB_TOKEN)  # what the stand-in seeds at start
    async with serve(stub) as url, httpx.AsyncClient(base_url=url) as http:
        path = f"/api/0/sentry-app-installations/{demo.DEMO_INSTALLATION}/external-issues/"
        link = {"issueId": 5912345678, "webUrl": "http://x/i", "project": "B", "identifier": "1"}
        auth = {"Authorization": f"Bearer {demo.STUB_TOKEN}"}
        assert (await http.post(path, json=link, headers=auth)).status_code == 404
        await asyncio.to_thread(demo.register_installation, url)
        made = await http.post(path, json=link, headers=auth)
        assert made.status_code == 201, made.text
        assert made.json()["displayName"] == "B#1"
        listed = (await http.get("/_stub/external-issues")).json()
        assert [e["issueId"] for e in listed] == ["5912345678"]
    body = json.loads(signed_fixture(demo.DEMO_FIXTURE)[0])
    assert body["installation"]["uuid"] == demo.DEMO_INSTALLATION  # what its webhooks name


def _api(status: int) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/integrations/sentry/connections"
        assert request.headers["Authorization"] == "Bearer recorded-key"
        return httpx.Response(status, json=[] if status == 200 else {"detail": "x"})

    return httpx.MockTransport(answer)


RECORDED = {"BLAMETRAIL_DEMO_API_KEY": "recorded-key", "BLAMETRAIL_API_URL": "http://api"}


def test_a_recorded_tenant_the_api_knows_is_kept() -> None:
    assert demo.seed(RECORDED, transport=_api(200)) == {}


def test_a_recorded_key_the_api_refuses_means_a_fresh_database_and_a_new_seed() -> None:
    """``.local/stack`` deleted, ``.local/stack.env`` kept: the recorded key names a tenant the new
    database never had; the demo ended with "unknown connection" instead of seeding again."""
    assert demo._known(RECORDED, _api(401)) is False
    with pytest.raises(RuntimeError, match="500"):  # an API that fails is said, not re-seeded over
        demo._known(RECORDED, _api(500))
