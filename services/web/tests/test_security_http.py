"""Issue 17's security findings on the web, over HTTP against the real API on real Postgres:
whose address the API is told (H1), links with a scheme other than http(s) (M2), API keys made
from the web (L4), the Content-Security-Policy's form-action, no-store on pages, a bounded
sign-in body and ids that never reach an API path as they came (L5)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import psycopg
import pytest
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_devstack.web_testing import (
    Clock,
    Env,
    csrf_of,
    new_org,
    post_form,
    seed_incident,
    sign_in,
)
from blametrail_mappings_api.app import create_app as create_api
from blametrail_mappings_api.repository import Pool, Repository
from blametrail_mappings_api.settings import ApiSettings
from blametrail_web.app import create_app
from blametrail_web.settings import WebSettings
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

PROXY = "127.0.0.1"  # the web's default trusted proxies are loopback (an edge, an ingress)


class Recorder:
    """The API as the web reaches it, remembering each request's X-Forwarded-For and path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[tuple[str, str | None]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            xff = [v.decode() for k, v in scope["headers"] if k == b"x-forwarded-for"]
            self.seen.append((scope["raw_path"].decode(), ", ".join(xff) if xff else None))
        await self.app(scope, receive, send)

    def forwarded(self, path: str) -> list[str | None]:
        return [x for p, x in self.seen if p == path]


@pytest.fixture
async def rec_env(pool: Pool, database_url: str) -> AsyncIterator[tuple[Env, Recorder]]:
    """The web (its peer to the API is pod 10.1.2.3, trusted by the API) before the real API,
    which locks out an address after 3 failed sign-ins (any accounts). The session's database
    is shared with earlier tests whose failed sign-ins count against the same addresses (the
    loopback peer above all): these tests start from none."""
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM login_throttle")
    clock = Clock()
    repo = Repository(pool, SecretBox(generate_key()))
    api_app = create_api(
        ApiSettings(
            public_ingest_url="https://hooks.example",
            trusted_proxies="10.0.0.0/8",
            login_address_failures=3,
            login_account_failures=1000,
        ),
        repo,
        {},
        clock=clock,
    )
    recorder = Recorder(api_app)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=recorder, client=("10.1.2.3", 4000)),
        base_url="http://api",
    ) as http:
        web_app = create_app(
            WebSettings(cookie_secure=False, public_ingest_url="https://hooks.example"),
            b"k" * 32,
            http,
        )
        yield Env(repo, api_app, web_app, clock, database_url), recorder


async def _wrong(browser: httpx.AsyncClient, email: str, xff: str | None) -> httpx.Response:
    form = await browser.get("/signin")
    headers = {"X-Forwarded-For": xff} if xff else {}
    return await browser.post(
        "/signin",
        data={"email": email, "password": "wrong", "csrf": csrf_of(form.text)},
        headers=headers,
    )


# --- H1 ---------------------------------------------------------------------------------------


async def test_the_api_is_told_the_browser_behind_a_trusted_proxy_not_the_proxy(
    rec_env: tuple[Env, Recorder],
) -> None:
    env, rec = rec_env
    org = await new_org(env.repo, env.api_app)
    email = await org.user("admin")
    async with env.browser(PROXY) as one, env.browser(PROXY) as two:
        # Two people behind the same ingress: each is a bucket of their own.
        for _ in range(3):
            refused = await _wrong(one, email, "198.51.100.1")
            assert refused.status_code == 400
        locked = await _wrong(one, email, "198.51.100.1")
        assert "Too many sign-in attempts" in locked.text
        ok = await post_form(
            two,
            "/signin",
            "/signin",
            {"email": email, "password": "correct horse battery staple"},
        )
        # (the sign-in form's GET carries no X-Forwarded-For; only the POST calls the API)
        assert ok.status_code == 303, ok.text
    sent = rec.forwarded("/api/v1/sessions")
    assert sent[0] == "198.51.100.1, 198.51.100.1"  # <received>, <client>
    assert sent[-1] == PROXY  # the second browser's proxy sent no header: the peer is the client


async def test_a_spoofed_header_from_an_untrusted_peer_is_ignored_and_does_not_escape_the_lock(
    rec_env: tuple[Env, Recorder],
) -> None:
    env, rec = rec_env
    org = await new_org(env.repo, env.api_app)
    email = await org.user("admin")
    async with env.browser("203.0.113.50") as b:
        for n in range(3):
            assert (await _wrong(b, email, f"192.0.2.{n}")).status_code == 400
        locked = await _wrong(b, email, "192.0.2.99")
        assert "Too many sign-in attempts" in locked.text
    assert set(rec.forwarded("/api/v1/sessions")) == {"203.0.113.50"}


async def test_the_rightmost_untrusted_hop_of_every_header_is_the_client(
    rec_env: tuple[Env, Recorder],
) -> None:
    env, rec = rec_env
    org = await new_org(env.repo, env.api_app)
    email = await org.user("admin")
    async with env.browser(PROXY) as b:
        form = await b.get("/signin")
        await b.post(
            "/signin",
            data={"email": email, "password": "wrong", "csrf": csrf_of(form.text)},
            headers=[
                ("X-Forwarded-For", "6.6.6.6, 198.51.100.7"),
                ("X-Forwarded-For", "127.0.0.1"),
            ],
        )
    assert rec.forwarded("/api/v1/sessions") == ["6.6.6.6, 198.51.100.7, 127.0.0.1, 198.51.100.7"]


def test_trusted_proxies_must_be_networks() -> None:
    with pytest.raises(ValidationError, match="does not appear to be an IPv4 or IPv6 network"):
        WebSettings(trusted_proxies="10.0.0.0/8, not-a-network")


# --- M2 ---------------------------------------------------------------------------------------

BAD_URLS = [
    "javascript:alert(document.cookie)",
    "JaVaScRiPt:alert(1)",
    " javascript:alert(1)",
    "\tjavascript:alert(1)",
    "java\nscript:alert(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "vbscript:msgbox(1)",
    "VBScript:msgbox(1)",
    "//evil.example/x",
    " https://sentry.example/leading-space",
]


@pytest.mark.parametrize("bad", BAD_URLS)
async def test_links_from_data_are_hrefs_only_when_http_or_https(env: Env, bad: str) -> None:
    org = await new_org(env.repo, env.api_app)
    email = await org.user("member")
    suspects = [
        {
            "deploy_id": "d-1",
            "version": "v1",
            "environment": "prod",
            "finished_at": datetime.now(UTC).isoformat(),
            "score": 0.9,
            "explain": "recent",
            "url": bad,
            "signals": [],
        },
        {
            "deploy_id": "d-2",
            "version": "v2",
            "environment": "prod",
            "finished_at": datetime.now(UTC).isoformat(),
            "score": 0.5,
            "explain": "older",
            "url": "HTTPS://deploys.example/2",
            "signals": [],
        },
    ]
    ident = seed_incident(env.dsn, org.slug, title="links", suspects=suspects)
    with psycopg.connect(env.dsn) as conn:
        conn.execute(
            "UPDATE incidents SET sentry = sentry || %s::jsonb WHERE incident_id = %s",
            (json.dumps({"web_url": bad, "short_id": "ISSUE-1"}), ident),
        )
        conn.execute(
            "INSERT INTO sentry_issue_links (incident_id, connection_id, sentry_issue_id, short_id,"
            " web_url, linked_at) VALUES (%s, 'c', '1', 'LINKED-BAD', %s, now()),"
            " (%s, 'c', '2', 'LINKED-GOOD', 'http://sentry.example/issues/2', now())",
            (ident, bad, ident),
        )
    async with env.browser() as b:
        assert (await sign_in(b, email)).status_code == 303
        page = await b.get(f"/incidents/{ident}")
    assert page.status_code == 200, page.text
    hrefs = [h.lower() for h in _hrefs(page.text)]
    assert not [h for h in hrefs if not h.startswith(("/", "#", "http://", "https://"))], hrefs
    assert not [h for h in hrefs if "script" in h or h.startswith("data:") or "evil" in h]
    assert "https://deploys.example/2" in hrefs  # an http(s) link stays a link (any case)
    assert "http://sentry.example/issues/2" in hrefs
    assert page.text.count(bad) >= 3  # the issue's, the linked issue's, the deploy's: plain text


def _hrefs(html: str) -> list[str]:
    import html as h
    import re

    return [h.unescape(m) for m in re.findall(r'href="([^"]*)"', html)]


# --- L4 ---------------------------------------------------------------------------------------


async def test_an_admin_creates_a_member_key_by_default_and_revoked_keys_show_as_revoked(
    env: Env,
) -> None:
    org = await new_org(env.repo, env.api_app)
    email = await org.user("admin")
    async with env.browser() as b:
        assert (await sign_in(b, email)).status_code == 303
        made = await post_form(b, "/org/api-keys", "/org/api-keys", {"name": "CI"})
        assert made.status_code == 201, made.text
        assert "Copy it now" in made.text
        assert made.headers["cache-control"] == "no-store"
        key = next(
            k for k in (await org.api.get("/api/v1/api-keys")).json()["items"] if k["name"] == "CI"
        )
        assert key["role"] == "member"
        admin = await post_form(
            b, "/org/api-keys", "/org/api-keys", {"name": "Ops", "role": "admin"}
        )
        assert admin.status_code == 201
        listed = (await org.api.get("/api/v1/api-keys")).json()["items"]
        assert {k["name"]: k["role"] for k in listed}["Ops"] == "admin"

        bad = await post_form(b, "/org/api-keys", "/org/api-keys", {"name": "X", "role": "owner"})
        assert bad.status_code == 400
        assert "Choose member or admin" in bad.text

        page = await b.get("/org/api-keys")
        revoked = await b.post(
            f"/org/api-keys/{key['id']}/revoke", data={"csrf": csrf_of(page.text)}
        )
        assert revoked.status_code == 303
        page = await b.get("/org/api-keys")
    assert "Revoke CI" not in page.text  # no button for a revoked key
    assert "Revoke Ops" in page.text
    assert page.text.count("Revoked ") >= 1
    assert f"/org/api-keys/{key['id']}/revoke" not in page.text


# --- L5 ---------------------------------------------------------------------------------------


async def test_forms_may_post_only_to_us_and_the_connect_origins(
    rec_env: tuple[Env, Recorder], env: Env
) -> None:
    configured, _ = rec_env
    async with configured.browser() as b:
        csp = (await b.get("/signin")).headers["content-security-policy"]
    # the API's public ingest URL and Sentry's: where "Connect with Sentry" redirects
    assert csp.endswith("form-action 'self' https://hooks.example https://sentry.io")
    assert "https:" not in csp.replace("https://hooks.example", "").replace("https://sentry.io", "")
    async with env.browser() as b:
        csp = (await b.get("/signin")).headers["content-security-policy"]
    assert csp.endswith("form-action 'self' http://127.0.0.1:8081 https://sentry.io")


def test_the_connect_origins_follow_the_apis_settings() -> None:
    """The web reads the API's own variables (BLAMETRAIL_PUBLIC_INGEST_URL, BLAMETRAIL_SENTRY_URL)
    and takes their origins; BLAMETRAIL_WEB_CONNECT_ORIGINS adds more, each origin once."""
    settings = WebSettings(
        public_ingest_url="http://127.0.0.1:8080/some/path?x=1",
        sentry_url="http://127.0.0.1:8090/",
        connect_origins="https://proxy.example, http://127.0.0.1:8090",
    )
    assert settings.form_origins() == (
        "http://127.0.0.1:8080",
        "http://127.0.0.1:8090",
        "https://proxy.example",
    )
    env = {
        "BLAMETRAIL_PUBLIC_INGEST_URL": "https://bt.example",
        "BLAMETRAIL_SENTRY_URL": "https://s.example",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert WebSettings().form_origins() == ("https://bt.example", "https://s.example")


def test_connect_origins_must_be_origins() -> None:
    for bad in ("https://x.example/path", "javascript:1", "https://a.example 'unsafe-inline'", "x"):
        with pytest.raises(ValidationError, match="not an origin"):
            WebSettings(connect_origins=bad)
    for bad in ("ftp://x.example", "https://a.example;script-src *", "https://u@x.example", "/x"):
        with pytest.raises(ValidationError, match="not an origin"):
            WebSettings(public_ingest_url=bad)
        with pytest.raises(ValidationError, match="not an origin"):
            WebSettings(sentry_url=bad)


async def test_every_page_is_no_store_and_static_files_are_not(env: Env) -> None:
    org = await new_org(env.repo, env.api_app)
    email = await org.user("admin")
    async with env.browser() as b:
        assert (await sign_in(b, email)).headers["cache-control"] == "no-store"
        for url in (
            "/incidents",
            "/org/api-keys",
            "/org/users",
            "/org/services",
            "/org/integrations/sentry",
            "/org/integrations/sentry/mappings",
            "/org/integrations/sentry/ignored",
        ):
            got = await b.get(url)
            assert got.status_code == 200, url
            assert got.headers["cache-control"] == "no-store", url
        assert "no-store" not in (await b.get("/static/app.css")).headers.get("cache-control", "")


async def test_a_sign_in_body_over_the_limit_is_a_413_page_before_it_is_parsed(env: Env) -> None:
    org = await new_org(env.repo, env.api_app)
    email = await org.user("admin")
    async with env.browser() as b:
        form = await b.get("/signin")
        token = csrf_of(form.text)
        big = await b.post(
            "/signin", data={"email": email, "password": "x" * 20_000, "csrf": token}
        )
        assert big.status_code == 413
        assert "Too much to send" in big.text

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
            yield f"csrf={token}&email={email}&password=".encode()
            for _ in range(10):
                yield b"y" * 1000

        streamed = await b.post(
            "/signin",
            content=chunks(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert streamed.status_code == 413
        # An ordinary sign-in still works.
        assert (await sign_in(b, email)).status_code == 303


@pytest.mark.parametrize(
    "url",
    [
        "/incidents/..%2F..%2Fusers",
        "/incidents/%2e%2e",
        "/incidents/x%3Fstatus=open",
        "/org/services/%2e%2e/edit",
        "/org/services/not-a-uuid/edit",
        "/org/integrations/sentry/mappings/%2e%2e/edit",
        "/org/integrations/sentry/ignored/jobs/..%2f..%2fusers",
    ],
)
async def test_ids_that_are_not_uuids_are_a_404_and_never_reach_the_api(
    rec_env: tuple[Env, Recorder], url: str
) -> None:
    env, rec = rec_env
    org = await new_org(env.repo, env.api_app)
    email = await org.user("admin")
    async with env.browser() as b:
        assert (await sign_in(b, email)).status_code == 303
        rec.seen.clear()
        got = await b.get(url)
    assert got.status_code == 404, got.text
    assert [p for p, _ in rec.seen if "users" in p or ".." in p or "%2e" in p.lower()] == []


async def test_a_uuid_in_any_spelling_reaches_the_api_canonical(
    rec_env: tuple[Env, Recorder],
) -> None:
    env, rec = rec_env
    org = await new_org(env.repo, env.api_app)
    email = await org.user("admin")
    ident = uuid.uuid4()
    async with env.browser() as b:
        assert (await sign_in(b, email)).status_code == 303
        got = await b.get(f"/incidents/{ident.hex.upper()}")
    assert got.status_code == 404  # nobody's incident
    assert f"/api/v1/incidents/{ident}" in [p for p, _ in rec.seen]
