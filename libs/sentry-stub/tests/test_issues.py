"""The stand-in's issue state answers detail and search as Sentry documents (PROTOCOL §5.1)."""

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from blametrail_sentry_stub import Fault, StubState, serve
from blametrail_sentry_stub.issues import IssueStore, SearchError, parse_query

ISSUES = "/api/0/organizations/acme/issues/"


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_query_parsing_accepts_sentry_terms_and_refuses_the_rest() -> None:
    q = parse_query("is:unresolved issue.id:[1, 2,3] firstSeen:>2026-01-01T00:00:00")
    assert q.statuses == frozenset({"unresolved"})
    assert q.ids == frozenset({"1", "2", "3"})
    assert q.seen[0][:2] == ("firstSeen", ">")
    assert parse_query("is:archived").statuses == frozenset({"ignored"})
    assert parse_query("").statuses is None
    for bad in ("is:sleeping", "issue.id:[x]", "firstSeen:2026", "owner:me", "free text"):
        with pytest.raises(SearchError):
            parse_query(bad)


def test_a_search_by_ids_finds_what_reading_every_issue_finds() -> None:
    store = IssueStore()
    for n in range(20):
        store.create("acme" if n % 4 else "other", "checkout-api", issue_id=str(200 + n))
    store.set_status("acme", "201", "resolved")
    store.merge("acme", ["202"], "203")
    store.delete("acme", "205")
    store.template = False  # ids never seen stay unknown, as in a scan
    project = store.get("acme", "201")["project"]["id"]  # type: ignore[index]
    for text in ("issue.id:[201,202,203,204,205,206,200,999]", "is:unresolved issue.id:[201,203]"):
        query = parse_query(text)
        for projects in (None, {project}, {"elsewhere"}):
            every = [
                i
                for (org, _), i in store.issues.items()
                if org == "acme"
                and query.matches(i)
                and (projects is None or i["project"]["id"] in projects)
            ]
            every.sort(key=lambda i: (i["firstSeen"], i["id"]), reverse=True)
            assert store.search("acme", query, projects) == every, (text, projects)
    found = store.search("acme", parse_query("issue.id:[201,202,203,204,205,206,200,999]"))
    assert [i["id"] for i in found] == ["206", "203", "201"]  # 200, 204: the other org's


def test_store_status_changes_and_merges_follow_redirects() -> None:
    store = IssueStore()
    a = store.create("acme", "checkout-api", issue_id="101")
    b = store.create("acme", "checkout-api", issue_id="102")
    assert a["status"] == "unresolved"
    assert "web_url" not in a
    store.set_status("acme", "101", "resolved", status_details={"inNextRelease": True})
    assert store.get("acme", "101")["substatus"] is None  # type: ignore[index]
    merged = store.merge("acme", ["101"], "102")
    assert merged["id"] == "102"
    assert merged["count"] == str(int(a["count"]) + int(b["count"]))
    assert store.get("acme", "101")["id"] == "102"  # type: ignore[index]
    assert store.search("acme", parse_query("issue.id:[101]")) == []
    store.create("acme", "checkout-api", issue_id="103")
    store.merge("acme", ["102"], "103")  # a chain: 101 -> 102 -> 103
    assert store.get("acme", "101")["id"] == "103"  # type: ignore[index]
    store.template = False
    with pytest.raises(KeyError):
        store.update("acme", "404404", {"status": "resolved"})
    store.delete("acme", "103")
    assert store.get("acme", "103") is None
    assert store.get("acme", "101") is None


async def test_detail_and_search_over_http_with_pagination() -> None:
    state = StubState()
    token = state.add_internal_token("acme")
    old = datetime(2026, 1, 1, tzinfo=UTC)
    for n in range(250):
        state.issue_store.create(
            "acme", "checkout-api", issue_id=str(1000 + n), first_seen=old + timedelta(minutes=n)
        )
    state.issue_store.create("acme", "other", project_id="77", issue_id="5000")
    state.issue_store.set_status("acme", "1003", "resolved")
    async with serve(state) as url, httpx.AsyncClient(base_url=url, headers=_auth(token)) as c:
        one = await c.get(f"{ISSUES}1003/")
        assert one.status_code == 200
        assert one.json()["status"] == "resolved"
        assert (await c.get("/api/0/organizations/globex/issues/1003/")).status_code == 403
        ids = ",".join(str(1000 + n) for n in range(0, 120))
        page = await c.get(ISSUES, params={"query": f"issue.id:[{ids}]"})
        assert page.status_code == 200
        assert len(page.json()) == 100
        assert 'rel="next"; results="true"' in page.headers["Link"]
        cursor = page.headers["Link"].split('rel="next"; results="true"; cursor="')[1].split('"')[0]
        rest = await c.get(ISSUES, params={"query": f"issue.id:[{ids}]", "cursor": cursor})
        assert len(rest.json()) == 20
        assert 'rel="next"; results="false"' in rest.headers["Link"]
        got = {i["id"] for i in page.json() + rest.json()}
        assert got == {str(1000 + n) for n in range(120)}
        # the default query is is:unresolved; project filters by numeric id
        default = await c.get(ISSUES, params={"project": "77"})
        assert [i["id"] for i in default.json()] == ["5000"]
        since = (old + timedelta(minutes=247)).isoformat()
        recent = await c.get(ISSUES, params={"query": f"firstSeen:>{since}"})
        # newest first: made now, the seeded fixture issue (2026-03-14), then ours
        assert [i["id"] for i in recent.json()] == ["5000", "5912345678", "1249", "1248"]
        assert (await c.get(ISSUES, params={"query": "bogus:1"})).status_code == 400
        # control routes: behind our back, then a merge
        await c.post("/_stub/issues/acme/1004/status", json={"status": "ignored"})
        assert (await c.get(f"{ISSUES}1004/")).json()["status"] == "ignored"
        made = await c.post("/_stub/issues", json={"org": "acme", "project_slug": "checkout-api"})
        assert made.status_code == 201
        await c.post("/_stub/issues/acme/merge", json={"into": made.json()["id"], "ids": ["1005"]})
        redirected = await c.get(f"{ISSUES}1005/")
        assert redirected.json()["id"] == made.json()["id"]
        assert (
            await c.post("/_stub/issues/acme/1/status", json={"status": "x"})
        ).status_code == 400
        # fault injection applies to the new routes too
        state.faults.append(Fault("issue_search", "503"))
        assert (await c.get(ISSUES)).status_code == 503
        state.faults.append(Fault("issue_detail", "429"))
        limited = await c.get(f"{ISSUES}1003/")
        assert limited.status_code == 429
        assert limited.headers["X-Sentry-Rate-Limit-Remaining"] == "0"
        assert (await c.get(f"{ISSUES}1003/", headers=_auth("wrong"))).status_code == 401


async def test_unknown_ids_exist_as_the_fixture_while_templating() -> None:
    state = StubState()
    token = state.add_internal_token("acme")
    async with serve(state) as url, httpx.AsyncClient(base_url=url, headers=_auth(token)) as c:
        found = await c.get(ISSUES, params={"query": "issue.id:[5912345678,42]"})
        assert sorted(i["id"] for i in found.json()) == ["42", "5912345678"]
        state.issue_store.template = False
        assert (await c.get(f"{ISSUES}43/")).status_code == 404
