"""People over HTTP against real Postgres: sign-in and sessions (idle and absolute expiry on an
injected clock, sign out, sign out everywhere), the sign-in throttle (per account, per address,
X-Forwarded-For only from a trusted proxy), roles (a member refused on every admin route, found
from the app's own routes), users (last-admin rule), API keys (revoked at once)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.forwarded import client_address, parse_networks
from blametrail_devstack.testkit import until
from blametrail_mappings_api.api.deps import page_size
from blametrail_mappings_api.app import ENDPOINTS, create_app
from blametrail_mappings_api.auth import Principal
from blametrail_mappings_api.errors import Conflict, Invalid
from blametrail_mappings_api.passwords import HashGate, Passwords
from blametrail_mappings_api.repository import Pool, Repository, create_pool
from blametrail_mappings_api.schemas import ApiBase
from blametrail_mappings_api.settings import ApiSettings
from pydantic import TypeAdapter, ValidationError

PASSWORD = "correct horse battery staple"


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Env:
    client: httpx.AsyncClient
    repo: Repository
    clock: Clock
    app: Any

    def client_from(self, host: str) -> httpx.AsyncClient:
        return _client_from(self.app, host)


def _client_from(app: Any, host: str) -> httpx.AsyncClient:
    """A client calling from ``host`` (a test of its own throttle bucket)."""
    transport = httpx.ASGITransport(app=app, client=(host, 4242))
    return httpx.AsyncClient(transport=transport, base_url="http://api")


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    p = create_pool(database_url, 4)
    await p.open()
    yield p
    await p.close()


def _app(pool: Pool, clock: Clock, **settings: Any) -> tuple[Any, Repository]:
    repo = Repository(pool, SecretBox(generate_key()))
    config = ApiSettings(public_ingest_url="https://hooks.example", **settings)
    return create_app(config, repo, {}, clock=clock), repo


@pytest.fixture
async def env(pool: Pool) -> AsyncIterator[Env]:
    clock = Clock()
    app, repo = _app(pool, clock)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as client:
        yield Env(client, repo, clock, app)


async def _org(env: Env) -> dict[str, str]:
    key = await env.repo.create_api_key(f"org-{uuid.uuid4().hex[:8]}")
    return {"Authorization": f"Bearer {key}"}


async def _user(
    env: Env, admin: dict[str, str], role: str = "member", email: str | None = None
) -> dict[str, Any]:
    email = email or f"{uuid.uuid4().hex[:10]}@example.test"
    made = await env.client.post(
        "/api/v1/users",
        headers=admin,
        json={"email": email, "name": "A Person", "password": PASSWORD, "role": role},
    )
    assert made.status_code == 201, made.text
    body: dict[str, Any] = made.json()
    return body


async def _sign_in(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD, **headers: str
) -> httpx.Response:
    return await client.post(
        "/api/v1/sessions", json={"email": email, "password": password}, headers=headers
    )


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_session_lives_until_idle_or_absolute_expiry_and_ends_at_sign_out(env: Env) -> None:
    admin = await _org(env)
    user = await _user(env, admin, "admin")
    signed = await _sign_in(env.client, user["email"].upper())  # email case does not matter
    assert signed.status_code == 201, signed.text
    body = signed.json()
    assert body["token"].startswith("bts_")
    assert body["idle_timeout_s"] == 8 * 3600
    assert body["user"] == {**body["user"], "id": user["id"], "role": "admin"}
    me = await env.client.get("/api/v1/me", headers=_bearer(body["token"]))
    assert me.json() == {
        "kind": "user",
        "id": user["id"],
        "email": user["email"],
        "name": "A Person",
        "role": "admin",
        "org": body["user"]["org"],
    }
    # Idle: used within 8 h it lives on; 8 h unused, it is over.
    auth = _bearer(body["token"])
    env.clock.advance(hours=7, minutes=59)
    assert (await env.client.get("/api/v1/me", headers=auth)).status_code == 200
    env.clock.advance(hours=8)
    expired = await env.client.get("/api/v1/me", headers=auth)
    assert (expired.status_code, expired.json()["message"]) == (401, "Session expired")

    # Absolute: used every 7 h, it still ends 7 days after sign-in.
    token = (await _sign_in(env.client, user["email"])).json()["token"]
    started = env.clock.now
    while env.clock.now + timedelta(hours=7) < started + timedelta(days=7):
        env.clock.advance(hours=7)
        assert (await env.client.get("/api/v1/me", headers=_bearer(token))).status_code == 200
    env.clock.now = started + timedelta(days=7)
    over = await env.client.get("/api/v1/me", headers=_bearer(token))
    assert (over.status_code, over.json()["message"]) == (401, "Session expired")

    # Sign out: this session only; sign out everywhere: every session of the user.
    one, two, three = [(await _sign_in(env.client, user["email"])).json()["token"] for _ in "abc"]
    out = await env.client.delete("/api/v1/sessions/current", headers=_bearer(one))
    assert out.status_code == 204
    assert (await env.client.get("/api/v1/me", headers=_bearer(one))).status_code == 401
    assert (await env.client.get("/api/v1/me", headers=_bearer(two))).status_code == 200
    assert (await env.client.delete("/api/v1/sessions", headers=_bearer(two))).status_code == 204
    for token in (two, three):
        gone = await env.client.get("/api/v1/me", headers=_bearer(token))
        assert (gone.status_code, gone.json()["message"]) == (401, "Session expired")
    # An API key has no session to end.
    assert (await env.client.delete("/api/v1/sessions/current", headers=admin)).status_code == 400


async def test_last_used_is_written_at_most_once_a_minute(env: Env, pool: Pool) -> None:
    user = await _user(env, await _org(env))
    token = (await _sign_in(env.client, user["email"])).json()["token"]
    signed_in_at = env.clock.now

    async def last_used() -> datetime:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT last_used_at FROM user_sessions WHERE user_id = %s", (user["id"],)
            )
            value: datetime = ((await cur.fetchone()) or {})["last_used_at"]
        return value

    for _ in range(5):
        env.clock.advance(seconds=10)
        assert (await env.client.get("/api/v1/me", headers=_bearer(token))).status_code == 200
    assert await last_used() == signed_in_at
    env.clock.advance(seconds=15)
    await env.client.get("/api/v1/me", headers=_bearer(token))
    assert await last_used() == env.clock.now


async def test_wrong_email_wrong_password_and_disabled_user_get_one_answer(env: Env) -> None:
    admin = await _org(env)
    user = await _user(env, admin)
    other = await _user(env, admin)
    patched = await env.client.patch(
        f"/api/v1/users/{other['id']}", headers=admin, json={"disabled": True}
    )
    assert patched.json()["disabled"] is True
    answers = [
        await _sign_in(env.client, "nobody@example.test"),
        await _sign_in(env.client, user["email"], "wrong password!"),
        await _sign_in(env.client, other["email"]),
    ]
    assert {(a.status_code, a.text) for a in answers} == {
        (401, '{"error":"unauthorized","message":"Wrong email or password"}')
    }


async def test_disabling_a_user_ends_their_sessions_and_roles_are_read_on_every_call(
    env: Env,
) -> None:
    admin = await _org(env)
    await _user(env, admin, "admin")  # so that the next is not the last admin
    user = await _user(env, admin, "admin")
    token = (await _sign_in(env.client, user["email"])).json()["token"]
    assert (await env.client.get("/api/v1/users", headers=_bearer(token))).status_code == 200
    demote = await env.client.patch(
        f"/api/v1/users/{user['id']}", headers=admin, json={"role": "member"}
    )
    assert demote.status_code == 200
    demoted = await env.client.get("/api/v1/users", headers=_bearer(token))
    assert (demoted.status_code, demoted.json()["message"]) == (403, "This needs the admin role")
    await env.client.patch(f"/api/v1/users/{user['id']}", headers=admin, json={"disabled": True})
    gone = await env.client.get("/api/v1/me", headers=_bearer(token))
    assert (gone.status_code, gone.json()["message"]) == (401, "Session expired")
    # enabled again, the old session stays ended: a new sign-in is needed
    await env.client.patch(f"/api/v1/users/{user['id']}", headers=admin, json={"disabled": False})
    assert (await env.client.get("/api/v1/me", headers=_bearer(token))).status_code == 401
    assert (await _sign_in(env.client, user["email"])).status_code == 201


async def test_throttle_per_account_until_the_window_ends_and_a_success_resets_it(
    pool: Pool,
) -> None:
    clock = Clock()
    app, repo = _app(pool, clock, login_account_failures=3, login_window_s=600)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as client:
        env = Env(client, repo, clock, app)
        user = await _user(env, await _org(env))
        for _ in range(2):
            assert (await _sign_in(client, user["email"], "wrong password!")).status_code == 401
        assert (await _sign_in(client, user["email"])).status_code == 201  # resets the count
        for _ in range(3):
            assert (await _sign_in(client, user["email"], "wrong password!")).status_code == 401
        held = await _sign_in(client, user["email"])  # the right password, but held
        assert held.status_code == 429
        assert held.json()["error"] == "throttled"
        assert 1 <= int(held.headers["Retry-After"]) <= 600
        clock.advance(seconds=int(held.headers["Retry-After"]))
        assert (await _sign_in(client, user["email"])).status_code == 201


async def test_throttle_per_address_and_forwarded_for_only_from_a_trusted_proxy(
    pool: Pool,
) -> None:
    clock = Clock()
    app, repo = _app(pool, clock, login_address_failures=3, trusted_proxies="10.9.0.0/16")
    proxy = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("10.9.0.5", 1)), base_url="http://api"
    )
    stranger = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("192.0.2.7", 1)), base_url="http://api"
    )
    async with proxy, stranger:
        env = Env(proxy, repo, clock, app)
        user = await _user(env, await _org(env))
        # Through the trusted proxy each client is its first X-Forwarded-For hop.
        for i in range(3):
            wrong = await _sign_in(
                proxy, f"x{i}@example.test", "whatever-wrong", **{"X-Forwarded-For": "203.0.113.1"}
            )
            assert wrong.status_code == 401
        same = await _sign_in(proxy, user["email"], **{"X-Forwarded-For": "203.0.113.1, 10.9.0.5"})
        assert same.status_code == 429  # that address is held, whichever account
        other = await _sign_in(proxy, user["email"], **{"X-Forwarded-For": "203.0.113.2"})
        assert other.status_code == 201
        # From a peer that is no trusted proxy the header is ignored: the peer is the client.
        for i in range(3):
            spoofed = {"X-Forwarded-For": f"198.51.100.{i}"}
            assert (
                await _sign_in(stranger, f"y{i}@example.test", "nope-nope", **spoofed)
            ).status_code == 401
        held = await _sign_in(stranger, user["email"], **{"X-Forwarded-For": "198.51.100.99"})
        assert held.status_code == 429


def test_the_client_is_the_rightmost_hop_no_trusted_proxy_wrote() -> None:
    trusted = parse_networks("10.9.0.0/16,127.0.0.1/32")
    cases = [
        ("10.9.0.5", None, "10.9.0.5"),
        ("192.0.2.7", "203.0.113.1", "192.0.2.7"),  # no trusted proxy: the header is ignored
        ("10.9.0.5", "203.0.113.1", "203.0.113.1"),
        ("10.9.0.5", "6.6.6.6, 203.0.113.1", "203.0.113.1"),  # the client wrote 6.6.6.6
        ("10.9.0.5", "6.6.6.6, 203.0.113.1, 10.9.3.3", "203.0.113.1"),  # over two proxies
        ("10.9.0.5", "10.9.1.1, 127.0.0.1", "10.9.1.1"),  # all trusted: the farthest
        ("10.9.0.5", "garbage", "10.9.0.5"),
        ("10.9.0.5", "6.6.6.6, garbage, 10.9.3.3", "10.9.3.3"),  # not an address: stop there
        ("10.9.0.5", "[2001:db8::1]:443", "2001:db8::1"),
        ("10.9.0.5", "203.0.113.1:5555", "203.0.113.1"),
        (None, "203.0.113.1", "unknown"),
    ]
    for peer, header, client in cases:
        assert client_address(peer, header, trusted) == client, (peer, header)


async def test_a_client_cannot_pick_its_throttle_bucket_through_a_trusted_proxy(
    pool: Pool,
) -> None:
    clock = Clock()
    app, repo = _app(pool, clock, login_address_failures=3, trusted_proxies="10.9.0.0/16")
    proxy = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("10.9.0.5", 1)), base_url="http://api"
    )
    async with proxy:
        env = Env(proxy, repo, clock, app)
        user = await _user(env, await _org(env))
        # The edge appends the address it was called from; what the client put left of it
        # (a new address each time) is not its address.
        for i in range(3):
            forged = {"X-Forwarded-For": f"6.6.6.{i}, 203.0.113.51"}
            wrong = await _sign_in(proxy, f"z{i}@example.test", "whatever-wrong", **forged)
            assert wrong.status_code == 401
        held = await _sign_in(proxy, user["email"], **{"X-Forwarded-For": "6.6.6.9, 203.0.113.51"})
        assert held.status_code == 429
        # Two X-Forwarded-For headers are one list: the proxy appended to the last.
        two = await proxy.post(
            "/api/v1/sessions",
            json={"email": user["email"], "password": PASSWORD},
            headers=[("X-Forwarded-For", "6.6.6.10"), ("X-Forwarded-For", "203.0.113.51")],
        )
        assert two.status_code == 429
        # ... and the shared proxy is nobody's bucket: another client signs in.
        other = await _sign_in(
            proxy, user["email"], **{"X-Forwarded-For": "203.0.113.51, 203.0.113.52"}
        )
        assert other.status_code == 201


# Writes a member may make (everything else that is not a GET is an admin's), and the reads
# only an admin may make. A new route is an admin route here unless it is added to these.
MEMBER_WRITES = {
    ("POST", "/api/v1/sessions"),
    ("DELETE", "/api/v1/sessions/current"),
    ("DELETE", "/api/v1/sessions"),
}
ADMIN_READS = {("GET", "/api/v1/users"), ("GET", "/api/v1/api-keys")}


def _member_may(method: str, path: str) -> bool:
    if (method, path) in ADMIN_READS:
        return False
    incident_action = path.startswith("/api/v1/incidents/{id}/") and method == "POST"
    return method in ("GET", "HEAD") or (method, path) in MEMBER_WRITES or incident_action


ADMIN_ROUTES = [e for e in ENDPOINTS if not _member_may(e.method, e.path)]


def test_the_admin_routes_are_what_the_rules_say() -> None:
    paths = {(e.method, e.path) for e in ADMIN_ROUTES}
    for expected in (
        ("POST", "/api/v1/services"),
        ("PATCH", "/api/v1/integrations/sentry/connections/{id}"),
        ("DELETE", "/api/v1/integrations/sentry/mappings/{id}"),
        ("POST", "/api/v1/api-keys"),
        ("PATCH", "/api/v1/users/{id}"),
        ("GET", "/api/v1/users"),
    ):
        assert expected in paths


@pytest.mark.parametrize(
    "endpoint", ADMIN_ROUTES, ids=[f"{e.method} {e.path}" for e in ADMIN_ROUTES]
)
async def test_a_member_is_refused_on_every_admin_route(env: Env, endpoint: Any) -> None:
    admin = await _org(env)
    member = await _user(env, admin, "member")
    token = (await _sign_in(env.client, member["email"])).json()["token"]
    path = endpoint.path.replace("{id}", str(uuid.uuid4()))
    answer = await env.client.request(
        endpoint.method, path, headers=_bearer(token), json={"anything": 1}
    )
    assert (answer.status_code, answer.json()) == (
        403,
        {"error": "forbidden", "message": "This needs the admin role"},
    )
    # a member API key likewise
    made = await env.client.post(
        "/api/v1/api-keys", headers=admin, json={"name": "ci", "role": "member"}
    )
    key = made.json()["key"]
    again = await env.client.request(endpoint.method, path, headers=_bearer(key), json={})
    assert again.status_code == 403


async def test_a_member_reads_everything(env: Env) -> None:
    admin = await _org(env)
    member = await _user(env, admin, "member")
    auth = _bearer((await _sign_in(env.client, member["email"])).json()["token"])
    for e in ENDPOINTS:
        if e.method == "GET" and "{" not in e.path and _member_may(e.method, e.path):
            assert (await env.client.get(e.path, headers=auth)).status_code == 200, e.path


async def test_api_keys_are_listed_without_the_key_and_a_revoked_one_is_refused_at_once(
    env: Env,
) -> None:
    admin = await _org(env)
    made = await env.client.post(
        "/api/v1/api-keys", headers=admin, json={"name": "deploy bot", "role": "member"}
    )
    assert made.status_code == 201
    key = made.json()
    assert key["key"].startswith(f"bt_{key['prefix']}_")
    me = await env.client.get("/api/v1/me", headers=_bearer(key["key"]))
    assert me.json() == {**me.json(), "kind": "api_key", "role": "member", "name": "deploy bot"}
    assert me.json()["email"] is None
    listed = (await env.client.get("/api/v1/api-keys", headers=admin)).json()["items"]
    assert all("key" not in k for k in listed)
    mine = next(k for k in listed if k["id"] == key["id"])
    assert mine["last_used_at"] is not None
    assert mine["revoked_at"] is None
    cli_key = next(k for k in listed if k["id"] != key["id"])
    assert cli_key["role"] == "admin"  # keys made by the CLI are admin keys
    assert (
        await env.client.delete(f"/api/v1/api-keys/{key['id']}", headers=admin)
    ).status_code == 204
    assert (await env.client.get("/api/v1/me", headers=_bearer(key["key"]))).status_code == 401
    listed = (await env.client.get("/api/v1/api-keys", headers=admin)).json()["items"]
    assert next(k for k in listed if k["id"] == key["id"])["revoked_at"] is not None


async def test_the_last_enabled_admin_can_be_neither_demoted_nor_disabled(env: Env) -> None:
    admin = await _org(env)
    first = await _user(env, admin, "admin")
    for change in ({"role": "member"}, {"disabled": True}):
        refused = await env.client.patch(f"/api/v1/users/{first['id']}", headers=admin, json=change)
        assert refused.status_code == 409
        assert "last enabled admin" in refused.json()["message"]
    second = await _user(env, admin, "admin")
    ok = await env.client.patch(
        f"/api/v1/users/{first['id']}", headers=admin, json={"role": "member"}
    )
    assert ok.status_code == 200
    last = await env.client.patch(
        f"/api/v1/users/{second['id']}", headers=admin, json={"disabled": True}
    )
    assert last.status_code == 409


async def test_user_input_is_checked(env: Env) -> None:
    admin = await _org(env)
    short = await env.client.post(
        "/api/v1/users",
        headers=admin,
        json={"email": "a@example.test", "name": "A", "password": "too-short", "role": "admin"},
    )
    assert short.status_code == 422
    assert [f["field"] for f in short.json()["fields"]] == ["password"]
    user = await _user(env, admin)
    dup = await env.client.post(
        "/api/v1/users",
        headers=await _org(env),  # unique across the installation, whatever the case
        json={"email": user["email"].upper(), "name": "B", "password": PASSWORD, "role": "admin"},
    )
    assert dup.status_code == 409
    # neutral words: nothing says the address is another organization's user
    assert dup.json()["message"] == "this email cannot be used"
    assert user["email"] not in dup.text
    assert user["email"].upper() not in dup.text
    bad_role = await env.client.post(
        "/api/v1/api-keys", headers=admin, json={"name": "k", "role": "owner"}
    )
    assert bad_role.status_code == 422


async def test_another_organizations_users_and_keys_are_not_found(env: Env) -> None:
    a, b = await _org(env), await _org(env)
    user = await _user(env, a)
    key = (
        await env.client.post("/api/v1/api-keys", headers=a, json={"name": "k", "role": "admin"})
    ).json()
    assert (
        await env.client.patch(f"/api/v1/users/{user['id']}", headers=b, json={"name": "x"})
    ).status_code == 404
    assert (await env.client.delete(f"/api/v1/api-keys/{key['id']}", headers=b)).status_code == 404
    assert user["id"] not in {
        u["id"] for u in (await env.client.get("/api/v1/users", headers=b)).json()["items"]
    }
    assert (await env.client.get("/api/v1/me", headers=_bearer(key["key"]))).status_code == 200


async def test_a_password_hashed_with_older_parameters_is_rehashed_at_sign_in(
    env: Env, pool: Pool
) -> None:
    user = await _user(env, await _org(env))
    old = PasswordHasher(time_cost=1, memory_cost=8192).hash(PASSWORD)
    async with pool.connection() as conn:
        await conn.execute("UPDATE users SET password_hash = %s WHERE id = %s", (old, user["id"]))
    assert (await _sign_in(env.client, user["email"])).status_code == 201
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT password_hash FROM users WHERE id = %s", (user["id"],))
        stored = ((await cur.fetchone()) or {})["password_hash"]
    assert stored != old
    assert not Passwords().needs_rehash(stored)
    assert (await _sign_in(env.client, user["email"])).status_code == 201


async def test_hashes_are_owasps_19_mib_and_a_64_mib_one_is_migrated_at_sign_in(
    env: Env, pool: Pool
) -> None:
    user = await _user(env, await _org(env))

    async def stored() -> str:
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT password_hash FROM users WHERE id = %s", (user["id"],))
            value: str = ((await cur.fetchone()) or {})["password_hash"]
        return value

    assert "$m=19456,t=2,p=1$" in await stored()
    old = PasswordHasher().hash(PASSWORD)  # argon2-cffi's defaults: what hashes were before
    assert "$m=65536,t=3,p=4$" in old
    async with pool.connection() as conn:
        await conn.execute("UPDATE users SET password_hash = %s WHERE id = %s", (old, user["id"]))
    assert (await _sign_in(env.client, user["email"])).status_code == 201
    assert "$m=19456,t=2,p=1$" in await stored()


class HeldPasswords(Passwords):
    """Real argon2id, but each check waits until the test lets it go (to fill the slots)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()

    def verify(self, stored: str | None, password: str) -> bool:
        assert self.go.wait(60), "the test never let the password check go"
        return super().verify(stored, password)


async def test_password_checks_are_bounded_and_one_too_many_is_503_at_once(pool: Pool) -> None:
    clock, held = Clock(), HeldPasswords()
    repo = Repository(pool, SecretBox(generate_key()))
    config = ApiSettings(
        public_ingest_url="https://hooks.example",
        hash_concurrency=2,
        hash_queue=3,
        login_account_failures=1,
    )
    app = create_app(config, repo, {}, clock=clock, passwords=held)
    gate: HashGate = app.state.identity.gate
    async with _client_from(app, "198.51.100.71") as client:
        first = [
            asyncio.create_task(_sign_in(client, f"q{i}-{uuid.uuid4().hex[:6]}@example.test"))
            for i in range(5)
        ]

        async def full() -> bool:
            return gate.admitted == 5 and gate.peak_running == 2

        await until("two checks running and three waiting", full, 30, 0.02)
        refused = [f"r{i}-{uuid.uuid4().hex[:6]}@example.test" for i in range(3)]
        more = [await _sign_in(client, email) for email in refused]
        assert {(r.status_code, r.headers.get("Retry-After")) for r in more} == {(503, "1")}
        assert more[0].json() == {
            "error": "busy",
            "message": "Too many sign-ins at once: try again in 1 seconds",
        }
        admin = {
            "Authorization": f"Bearer {await repo.create_api_key(f'org-{uuid.uuid4().hex[:8]}')}"
        }
        new_user = await client.post(
            "/api/v1/users",
            headers=admin,
            json={"email": "s@example.test", "name": "S", "password": PASSWORD, "role": "admin"},
        )
        assert new_user.status_code == 503  # making a user hashes in the same bound
        held.go.set()
        assert {r.status_code for r in await asyncio.gather(*first)} == {401}
        assert (gate.peak_running, gate.admitted) == (2, 0)
        # The bound freed, a refused one is welcome again: its 503 was not counted (one failure
        # per account is allowed here, so a counted 503 would make this a 429).
        again = await _sign_in(client, refused[0])
        assert again.status_code == 401


async def test_parallel_wrong_passwords_cannot_pass_the_throttle_together(pool: Pool) -> None:
    clock = Clock()
    app, repo = _app(pool, clock, login_account_failures=3, hash_queue=32)
    async with _client_from(app, "198.51.100.72") as client:
        env = Env(client, repo, clock, app)
        user = await _user(env, await _org(env))
        answers = await asyncio.gather(
            *(_sign_in(client, user["email"], f"wrong password {i}") for i in range(12))
        )
        assert sorted(a.status_code for a in answers) == [401] * 3 + [429] * 9
        held = await _sign_in(client, user["email"])
        assert held.status_code == 429  # the right password too, until the window ends


async def test_a_success_takes_its_attempt_back_from_the_address(pool: Pool) -> None:
    clock = Clock()
    app, repo = _app(pool, clock, login_address_failures=3, trusted_proxies="10.9.0.0/16")
    proxy = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("10.9.0.5", 1)), base_url="http://api"
    )
    async with proxy:
        env = Env(proxy, repo, clock, app)
        user = await _user(env, await _org(env))
        xff = {"X-Forwarded-For": "203.0.113.61"}
        assert (
            await _sign_in(proxy, "nobody-a@example.test", "wrong-wrong", **xff)
        ).status_code == 401
        for _ in range(5):  # successes are no failures: the address is never held for them
            assert (await _sign_in(proxy, user["email"], **xff)).status_code == 201
        for i in range(2):
            assert (
                await _sign_in(proxy, f"nobody{i}@example.test", "nope", **xff)
            ).status_code == 401
        assert (await _sign_in(proxy, user["email"], **xff)).status_code == 429


def test_page_size_refuses_digits_int_cannot_read() -> None:
    for bad in ("²", "1²", "٣", "0", "201", "-1", "1.5", ""):
        with pytest.raises(Invalid):
            page_size(bad)
    assert [page_size(n) for n in ("1", "50", "200")] == [1, 50, 200]


async def test_a_superscript_limit_is_a_422_not_a_500(env: Env) -> None:
    admin = await _org(env)
    answer = await env.client.get("/api/v1/users?limit=²", headers=admin)
    assert (answer.status_code, answer.json()["fields"][0]["field"]) == (422, "limit")


def test_sentry_base_urls_are_no_internal_address_literals() -> None:
    adapter = TypeAdapter(ApiBase)
    for refused in (
        "https://10.0.0.5",
        "https://192.168.1.1",
        "https://172.16.0.1",
        "https://169.254.169.254",  # cloud metadata
        "https://100.64.0.1",
        "https://0.0.0.0",
        "https://[fd00::1]",
        "https://[fe80::1]",
        "https://[::ffff:10.0.0.1]",
        "https://224.0.0.1",
        "https://127.0.0.2",
    ):
        with pytest.raises(ValidationError, match="private, loopback, link-local"):
            adapter.validate_python(refused)
    for allowed in (
        "https://sentry.io",
        "https://de.sentry.io/",
        "https://sentry.internal.example",  # a name: resolved by whoever runs it
        "https://8.8.8.8",
        "http://127.0.0.1:8090",  # the local stand-in (development)
        "http://localhost:9000",
    ):
        assert adapter.validate_python(allowed) == allowed.rstrip("/")


async def test_ended_throttle_windows_and_long_over_sessions_are_purged(
    env: Env, pool: Pool
) -> None:
    user = await _user(env, await _org(env))
    tokens = []
    for _ in "abc":  # one a second: created_at orders them
        tokens.append((await _sign_in(env.client, user["email"])).json()["token"])
        env.clock.advance(seconds=1)
    old_key, fresh_key = f"address:old-{uuid.uuid4().hex}", f"address:new-{uuid.uuid4().hex}"
    now = env.clock.now
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO login_throttle (key, failures, window_start) VALUES (%s, 9, %s),"
            " (%s, 9, %s)",
            (old_key, now - timedelta(hours=2), fresh_key, now),
        )
        cur = await conn.execute(
            "SELECT id FROM user_sessions WHERE user_id = %s ORDER BY created_at, id",
            (user["id"],),
        )
        ids = [r["id"] for r in await cur.fetchall()]
        await conn.execute(  # over two days ago (absolute), and revoked an hour ago
            "UPDATE user_sessions SET expires_at = %s WHERE id = %s",
            (now - timedelta(days=2), ids[0]),
        )
        await conn.execute(
            "UPDATE user_sessions SET revoked_at = %s WHERE id = %s",
            (now - timedelta(hours=1), ids[1]),
        )
    env.clock.advance(minutes=6)  # the purge runs at most every 5 minutes per process
    assert (await _sign_in(env.client, user["email"])).status_code == 201
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT key FROM login_throttle WHERE key = ANY(%s)", ([old_key, fresh_key],)
        )
        assert [r["key"] for r in await cur.fetchall()] == [fresh_key]
        cur = await conn.execute("SELECT id FROM user_sessions WHERE id = ANY(%s)", (ids,))
        assert {r["id"] for r in await cur.fetchall()} == {ids[1], ids[2]}
    # the revoked one is still told "Session expired"; the live one lives
    gone = await env.client.get("/api/v1/me", headers=_bearer(tokens[1]))
    assert (gone.status_code, gone.json()["message"]) == (401, "Session expired")
    assert (await env.client.get("/api/v1/me", headers=_bearer(tokens[2]))).status_code == 200


async def test_disabling_a_user_revokes_the_api_keys_they_made_and_the_list_shows_who(
    env: Env,
) -> None:
    """Issue 17 M5: a key does not outlive the admin who made it (nor a key made by that key);
    another admin's key and the CLI's key stay."""
    cli = await _org(env)
    mallory = await _user(env, cli, "admin")
    alice = await _user(env, cli, "admin")
    as_mallory = _bearer((await _sign_in(env.client, mallory["email"])).json()["token"])
    as_alice = _bearer((await _sign_in(env.client, alice["email"])).json()["token"])

    async def made(by: dict[str, str], name: str) -> dict[str, Any]:
        answer = await env.client.post(
            "/api/v1/api-keys", headers=by, json={"name": name, "role": "admin"}
        )
        assert answer.status_code == 201, answer.text
        body: dict[str, Any] = answer.json()
        return body

    hers = await made(as_mallory, "mallory's")
    chained = await made(_bearer(hers["key"]), "made by mallory's key")
    alices = await made(as_alice, "alice's")
    assert hers["created_by_user_id"] == mallory["id"]
    assert chained["created_by_user_id"] == mallory["id"]
    listed = {
        k["id"]: k for k in (await env.client.get("/api/v1/api-keys", headers=cli)).json()["items"]
    }
    assert listed[alices["id"]]["created_by_user_id"] == alice["id"]
    assert [k["created_by_user_id"] for k in listed.values() if k["name"] == ""] == [None]

    off = await env.client.patch(
        f"/api/v1/users/{mallory['id']}", headers=cli, json={"disabled": True}
    )
    assert off.status_code == 200
    for key in (hers, chained):
        assert (await env.client.get("/api/v1/me", headers=_bearer(key["key"]))).status_code == 401
    for still in (alices["key"],):
        assert (await env.client.get("/api/v1/me", headers=_bearer(still))).status_code == 200
    assert (await env.client.get("/api/v1/me", headers=cli)).status_code == 200
    listed = {
        k["id"]: k for k in (await env.client.get("/api/v1/api-keys", headers=cli)).json()["items"]
    }
    assert listed[hers["id"]]["revoked_at"] is not None
    assert listed[chained["id"]]["revoked_at"] is not None
    assert listed[alices["id"]]["revoked_at"] is None
    # enabled again, the revoked keys stay revoked
    await env.client.patch(f"/api/v1/users/{mallory['id']}", headers=cli, json={"disabled": False})
    assert (await env.client.get("/api/v1/me", headers=_bearer(hers["key"]))).status_code == 401


async def test_a_key_is_not_made_for_a_user_disabled_since_the_call_was_authenticated(
    env: Env, pool: Pool
) -> None:
    """The race of M5: the creator is read under a share lock in the key's transaction; a user
    disabled after their call was authenticated is a 409, never a live key of a disabled user
    (nor of one made by such a user's key)."""
    cli = await _org(env)
    mallory = await _user(env, cli, "admin")
    as_mallory = _bearer((await _sign_in(env.client, mallory["email"])).json()["token"])
    made = await env.client.post(
        "/api/v1/api-keys", headers=as_mallory, json={"name": "k", "role": "admin"}
    )
    await _user(env, cli, "admin")  # so that mallory is not the last admin
    off = await env.client.patch(
        f"/api/v1/users/{mallory['id']}", headers=cli, json={"disabled": True}
    )
    assert off.status_code == 200, off.text
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT org_id FROM users WHERE id = %s", (mallory["id"],))
        org = str(((await cur.fetchone()) or {})["org_id"])
    keys = env.app.state.identity.keys
    as_user = Principal("user", mallory["id"], "A Person", "admin", org)
    as_key = Principal("api_key", made.json()["id"], "k", "admin", org)
    for who in (as_user, as_key):
        with pytest.raises(Conflict, match="disabled"):
            await keys.create_in(org, "late", "admin", who)
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM api_keys WHERE created_by_user_id = %s"
            " AND revoked_at IS NULL",
            (mallory["id"],),
        )
        assert ((await cur.fetchone()) or {})["n"] == 0
