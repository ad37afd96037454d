"""The pages over HTTP (no browser), against the real API on real Postgres: sign-in, CSRF,
session expiry and revocation, a member refused on admin actions, another organization's objects,
and HTML escaping of every Sentry-provided string."""

from __future__ import annotations

import re
import time
import uuid

from blametrail_devstack.web_testing import Env, csrf_of, new_org, post_form, seed_incident, sign_in
from blametrail_web.app import page_routes
from starlette.routing import Route

XSS = '<script>alert("x")</script>'
ESCAPED = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;"


async def test_sign_in_lands_on_incidents_and_wrong_password_is_a_message(env: Env) -> None:
    org = await new_org(env.repo, env.api_app)
    email = await org.user("admin")
    async with env.browser() as b:
        unsigned = await b.get("/incidents")
        assert unsigned.status_code == 303
        assert unsigned.headers["location"] == "/signin?next=%2Fincidents"
        wrong = await sign_in(b, email, "not the password")
        assert wrong.status_code == 400
        assert "Wrong email or password" in wrong.text
        ok = await sign_in(b, email)
        assert (ok.status_code, ok.headers["location"]) == (303, "/incidents")
        cookie = ok.headers.get_list("set-cookie")
        session = next(c for c in cookie if c.startswith("bt_session="))
        assert "HttpOnly" in session
        assert "SameSite=lax" in session
        assert "Secure" not in session
        page = await b.get("/incidents")
        assert page.status_code == 200
        assert "<h1>Incidents</h1>" in page.text
        assert "Admin Person" in page.text


async def test_every_state_changing_route_refuses_a_missing_or_wrong_csrf_token(env: Env) -> None:
    org = await new_org(env.repo, env.api_app)
    email = await org.user("admin")
    posts = [
        r.path for r in page_routes() if isinstance(r, Route) and r.methods and "POST" in r.methods
    ]
    assert len(posts) >= 15
    dummy = str(uuid.uuid4())
    async with env.browser() as b:
        assert (await sign_in(b, email)).status_code == 303
        svc_before = (await org.api.get("/api/v1/services")).json()["items"]
        for path in posts:
            url = re.sub(r"\{[a-z_]+\}", "acknowledge" if "verb" in path else dummy, path)
            url = url.replace("/acknowledge/", f"/{dummy}/")
            for data in ({}, {"csrf": "forged"}):
                refused = await b.post(url, data={**data, "name": "X", "everywhere": "1"})
                assert refused.status_code == 403, (url, refused.status_code)
                assert "This form has expired" in refused.text
        assert (await org.api.get("/api/v1/services")).json()["items"] == svc_before
        assert (await b.get("/incidents")).status_code == 200  # still signed in
    # The sign-in form is protected too (a pre-session token).
    async with env.browser() as b:
        forged = await b.post("/signin", data={"email": email, "password": "x", "csrf": "x"})
        assert forged.status_code == 403


async def test_expired_and_revoked_sessions_go_back_to_sign_in_with_a_message(env: Env) -> None:
    org = await new_org(env.repo, env.api_app)
    email = await org.user("member")
    async with env.browser() as one, env.browser("198.51.100.9") as two:
        assert (await sign_in(one, email)).status_code == 303
        env.clock.advance(hours=9)  # past the idle limit
        gone = await one.get("/org/services")
        assert (gone.status_code, gone.headers["location"]) == (
            303,
            "/signin?next=%2Forg%2Fservices",
        )
        again = await one.get(gone.headers["location"])
        assert "Your session has ended: sign in again." in again.text

        assert (await sign_in(one, email)).status_code == 303
        assert (await sign_in(two, email)).status_code == 303
        out = await post_form(two, "/incidents", "/signout", {"everywhere": "1"})
        assert (out.status_code, out.headers["location"]) == (303, "/signin")
        revoked = await one.get("/incidents")
        assert revoked.status_code == 303
        assert revoked.headers["location"].startswith("/signin")


async def test_a_member_refused_on_an_admin_action_gets_a_page_message(env: Env) -> None:
    org = await new_org(env.repo, env.api_app)
    email = await org.user("member")
    async with env.browser() as b:
        assert (await sign_in(b, email)).status_code == 303
        page = await b.get("/org/services")
        assert "Create a service" not in page.text  # the form is not offered...
        refused = await b.post("/org/services", data={"name": "Sneaky", "csrf": csrf_of(page.text)})
        assert refused.status_code == 403  # ...and the API refuses it anyway
        assert "This needs the admin role" in refused.text
        assert (await org.api.get("/api/v1/services")).json()["items"] == []


async def test_another_organizations_objects_are_a_404_page(env: Env) -> None:
    mine, theirs = await new_org(env.repo, env.api_app), await new_org(env.repo, env.api_app)
    email = await mine.user("admin")
    svc = (
        await theirs.api.post("/api/v1/services", json={"name": "Theirs", "slug": "theirs"})
    ).json()
    incident = seed_incident(env.dsn, theirs.slug, title="their incident")
    async with env.browser() as b:
        assert (await sign_in(b, email)).status_code == 303
        for url in (
            f"/incidents/{incident}",
            f"/org/services/{svc['id']}/edit",
            f"/org/services/{svc['id']}/delete",
            f"/org/integrations/sentry/mappings/{uuid.uuid4()}/edit",
        ):
            page = await b.get(url)
            assert page.status_code == 404, url
            assert "belongs to another organization" in page.text
            assert "their incident" not in page.text
        page = await b.get("/org/services/" + svc["id"] + "/delete")
        deleted = await b.post(
            f"/org/services/{svc['id']}/delete", data={"csrf": csrf_of(page.text)}
        )
        assert deleted.status_code == 404
    assert (await theirs.api.get(f"/api/v1/services/{svc['id']}")).status_code == 200


async def test_every_sentry_provided_string_is_escaped(env: Env) -> None:
    org = await new_org(env.repo, env.api_app)
    email = await org.user("admin")
    record = {
        "title": XSS,
        "environment": XSS,
        "release": {"version": XSS},
        "tags": [
            {"key": XSS, "name": XSS, "total_values": 3, "top_values": [{"value": XSS, "count": 2}]}
        ],
        "exceptions": [
            {
                "type": XSS,
                "value": XSS,
                "module": None,
                "mechanism": None,
                "handled": False,
                "frames": [
                    {
                        "filename": XSS,
                        "abs_path": None,
                        "module": None,
                        "function": XSS,
                        "line_no": 3,
                        "col_no": None,
                        "in_app": False,
                        "context": [],
                    },
                    {
                        "filename": XSS,
                        "abs_path": None,
                        "module": None,
                        "function": XSS,
                        "line_no": 7,
                        "col_no": None,
                        "in_app": True,
                        "context": [[6, XSS], [7, XSS]],
                    },
                ],
            }
        ],
        "breadcrumbs": [
            {
                "timestamp": None,
                "type": XSS,
                "category": XSS,
                "level": XSS,
                "message": XSS,
                "data": {"k": XSS},
            }
        ],
        "user": {
            "id": XSS,
            "email": XSS,
            "username": XSS,
            "ip_address": None,
            "name": XSS,
            "geo": None,
        },
        "contexts": {"browser": {"name": XSS}},
    }
    suspects = [
        {
            "deploy_id": "d1",
            "service_id": "s",
            "version": XSS,
            "environment": XSS,
            "finished_at": None,
            "url": None,
            "score": 0.8,
            "explain": XSS,
            "signals": [
                {
                    "name": "time",
                    "value": 1,
                    "weight": 0.5,
                    "contribution": 0.5,
                    "imputed": False,
                    "detail": XSS,
                }
            ],
        }
    ]
    ident = seed_incident(env.dsn, org.slug, title=XSS, record=record, suspects=suspects)
    async with env.browser() as b:
        assert (await sign_in(b, email)).status_code == 303
        for url in ("/incidents", f"/incidents/{ident}", "/incidents/rows"):
            page = await b.get(url)
            assert page.status_code == 200, url
            assert "<script>" not in page.text.replace(
                '<script src="/static/app.js" defer></script>', ""
            )
            assert ESCAPED in page.text, url
        detail = (await b.get(f"/incidents/{ident}")).text
        assert detail.count(ESCAPED) >= 15
        assert "crashed here" in detail
        assert "1 library frame" in detail
        assert "Content-Security-Policy".lower() in (await b.get("/incidents")).headers


async def test_a_page_tells_its_server_time_in_server_timing(env: Env) -> None:
    """bench/web's figure: ``Server-Timing: app;dur=<ms>``, the web's own time for the page (its
    API calls and the rendering), never more than the client waited for the whole answer."""
    org = await new_org(env.repo, env.api_app)
    email = await org.user("admin")
    async with env.browser() as b:
        await sign_in(b, email)
        for url in ("/incidents", "/org/integrations/sentry/mappings", "/no/such/page"):
            began = time.perf_counter()
            got = await b.get(url)
            waited_ms = (time.perf_counter() - began) * 1000
            found = re.fullmatch(r"app;dur=([0-9]+\.[0-9])", got.headers["server-timing"])
            assert found, (url, got.headers["server-timing"])
            assert 0 < float(found.group(1)) <= waited_ms + 0.1, (url, found.group(1), waited_ms)
