"""Public (OAuth) installs against real Postgres and the Sentry stand-in (PROTOCOL §3): connect
link -> redirect -> one grant exchange -> verify -> bound connection; replayed and expired grants;
refresh before expiry, early refresh requests, a refresh whose answer was lost; uninstall and
reinstall."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlparse

import httpx
import pytest
from aiokafka import ConsumerRecord
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.db import migrate
from blametrail_common.events import decode, encode, new_event
from blametrail_common.events.installations import SentryInstallationV1, token_fingerprint
from blametrail_devstack.pytest_plugin import Infra, create_database
from blametrail_mappings_api.app import create_app
from blametrail_mappings_api.repository import Pool, Repository, create_pool
from blametrail_mappings_api.sentry.client import SentryApp, SentryAuthRefused, SentryUnavailable
from blametrail_mappings_api.sentry.oauth import OAuth
from blametrail_mappings_api.sentry.state import COOKIE, ConnectState, OAuthRefused
from blametrail_mappings_api.settings import ApiSettings, OAuthSettings
from blametrail_sentry_stub import Fault, StubState, serve
from blametrail_sentry_stub.state import GRANT_LIFE_S, TOKEN_LIFE_S

CLIENT_ID, CLIENT_SECRET = "bt-public-app", "public-app-secret"
HOST = "https://hooks.example"


@dataclass
class World:
    stub: StubState
    oauth: OAuth
    api: httpx.AsyncClient
    pool: Pool
    box: SecretBox

    async def tenant(self) -> tuple[str, dict[str, str]]:
        repo = Repository(self.pool, self.box)
        key = await repo.create_api_key(f"oauth-{uuid.uuid4().hex[:8]}")
        org = await repo.org_for_key(f"Bearer {key}")
        assert org is not None
        return org, {"Authorization": f"Bearer {key}"}

    async def start_connect(self, auth: dict[str, str]) -> str:
        """The admin's connect link, opened in a browser: returns the state cookie."""
        link = await self.api.post("/api/v1/integrations/sentry/connect", headers=auth)
        assert link.status_code == 201, link.text
        url = urlparse(link.json()["url"])
        assert f"{url.scheme}://{url.netloc}" == HOST
        opened = await self.api.get(f"{url.path}?{url.query}")
        assert opened.status_code == 302
        assert opened.headers["location"].endswith("/sentry-apps/blametrail/external-install/")
        assert "HttpOnly" in opened.headers["set-cookie"]
        assert "Secure" in opened.headers["set-cookie"]  # the public URL is https
        return opened.cookies[COOKIE]

    async def callback(
        self, installation: str, code: str, state: str | None, confirm: bool = True
    ) -> httpx.Response:
        """Sentry's redirect; then, as the person would, press Connect on the page it shows."""
        self.api.cookies.clear()
        cookie = {"Cookie": f"{COOKIE}={state}"} if state else {}
        page = await self.api.get(
            "/integrations/sentry/oauth/callback",
            params={"installationId": installation, "code": code, "orgSlug": "acme"},
            headers=cookie,
        )
        form = dict(re.findall(r'name="(\w+)" value="([^"]*)"', page.text))
        if not confirm or page.status_code != 200 or not form:
            return page
        return await self.api.post(
            "/integrations/sentry/oauth/confirm",
            content=urlencode(form),
            headers={**cookie, "Content-Type": "application/x-www-form-urlencoded"},
        )

    def exchanges(self, installation: str) -> int:
        path = f"/api/0/sentry-app-installations/{installation}/authorizations/"
        return sum(1 for r in self.stub.requests if r["path"] == path)

    async def connection(self, installation: str) -> dict[str, Any]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM sentry_connections WHERE installation_uuid = %s", (installation,)
            )
            row = await cur.fetchone()
        assert row is not None
        return row

    def token(self, row: dict[str, Any]) -> str:
        return self.box.decrypt(row["auth_token_enc"])


@pytest.fixture
async def world(infra: Infra) -> AsyncIterator[World]:
    # A database of its own: the token keeper looks at every OAuth connection there is.
    dsn = create_database(infra.server_dsn, f"bt_oauth_{uuid.uuid4().hex[:8]}")
    migrate(dsn)
    pool = create_pool(dsn, 6)
    await pool.open()
    box = SecretBox(generate_key())
    stub = StubState()
    async with serve(stub) as stub_url, httpx.AsyncClient() as http:
        settings = OAuthSettings(sentry_url=stub_url, client_id=CLIENT_ID, check_s=0.1)
        oauth = OAuth(pool, box, SentryApp(http, stub_url, CLIENT_ID, CLIENT_SECRET), settings)
        app = create_app(
            ApiSettings(public_ingest_url=HOST), Repository(pool, box), {}, None, oauth
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api"
        ) as api:
            yield World(stub, oauth, api, pool, box)
    await pool.close()


async def test_connect_link_redirect_exchange_verify_bind(world: World) -> None:
    org, auth = await world.tenant()
    state = await world.start_connect(auth)
    inst, code = world.stub.add_installation("acme", CLIENT_ID, CLIENT_SECRET)

    done = await world.callback(inst.uuid, code, state)
    assert done.status_code == 200, done.text
    assert "acme is connected" in done.text
    row = await world.connection(inst.uuid)
    assert (str(row["org_id"]), row["mode"], row["enabled"]) == (org, "oauth", True)
    assert world.stub.token_for(f"Bearer {world.token(row)}") is not None  # a live token
    assert world.stub.installations[inst.uuid].status == "installed"  # verified
    assert row["refresh_token_enc"] is not None
    async with world.pool.connection() as conn:  # the token leaves only encrypted, via the outbox
        cur = await conn.execute(
            "SELECT value FROM outbox WHERE topic = 'cp-connections' AND key = %s"
            " ORDER BY id DESC LIMIT 1",
            (str(row["id"]).encode(),),
        )
        published = decode((await cur.fetchone())["value"]).payload  # type: ignore[index]
    assert published.mode == "oauth"
    assert world.box.decrypt(published.auth_token_enc) == world.token(row)
    assert world.token(row) not in published.model_dump_json()

    # A reload of the callback page: the same connection, no second exchange.
    again = await world.callback(inst.uuid, code, state)
    assert again.status_code == 200
    assert (await world.connection(inst.uuid))["id"] == row["id"]
    assert world.exchanges(inst.uuid) == 1
    # The API lists it with the public webhook URL and its token's expiry.
    listed = (await world.api.get("/api/v1/integrations/sentry/connections", headers=auth)).json()[
        "items"
    ]
    assert [c["webhook_url"] for c in listed] == [f"{HOST}/webhooks/sentry"]
    assert listed[0]["token_expires_at"] is not None


async def test_webhook_and_redirect_race_one_exchange(world: World) -> None:
    _, auth = await world.tenant()
    for _ in range(3):
        state = await world.start_connect(auth)
        inst, code = world.stub.add_installation("acme", CLIENT_ID, CLIENT_SECRET)
        event = SentryInstallationV1(
            installation_uuid=inst.uuid,
            action="created",
            sentry_org_slug="acme",
            code=code,
            raw_event_id=str(uuid.uuid4()),
            received_at=world.oauth.now(),
        )
        record = _record(new_event(event, key=inst.uuid))
        world.stub.faults.append(Fault("authorizations", "slow", delay_s=0.2))  # widen the race
        _, page = await asyncio.gather(
            world.oauth.handle([record]), world.callback(inst.uuid, code, state)
        )
        assert page.status_code == 200, page.text
        assert world.exchanges(inst.uuid) == 1
        # the webhook again (Sentry retries): still one exchange
        await world.oauth.handle([record])
        assert world.exchanges(inst.uuid) == 1
        # uninstall before the next round, so the reinstall binds afresh
        await world.oauth.uninstall(inst.uuid)


async def test_replayed_expired_and_unsigned_installs_are_refused(world: World) -> None:
    _, auth_a = await world.tenant()
    _, auth_b = await world.tenant()
    state_a, state_b = await world.start_connect(auth_a), await world.start_connect(auth_b)
    inst, code = world.stub.add_installation("acme", CLIENT_ID, CLIENT_SECRET)
    assert (await world.callback(inst.uuid, code, state_a)).status_code == 200

    # The same install code with another organization's connect state: never rebound.
    replay = await world.callback(inst.uuid, code, state_b)
    assert replay.status_code == 409
    assert "another organization" in replay.text
    # No connect state, a forged one, an expired one.
    inst2, code2 = world.stub.add_installation("acme", CLIENT_ID, CLIENT_SECRET)
    assert (await world.callback(inst2.uuid, code2, None)).status_code == 400
    forged = state_a[:-1] + ("0" if state_a[-1] != "0" else "1")
    assert (await world.callback(inst2.uuid, code2, forged)).status_code == 400
    states = ConnectState(world.box.mac_keys("sentry connect state"))
    old = states.sign("any", time.time() - 1000, 900)
    expired = await world.callback(inst2.uuid, code2, old)
    assert expired.status_code == 400
    assert "expired" in expired.text
    assert world.exchanges(inst2.uuid) == 0  # refused before Sentry was asked
    # An expired grant (ten minutes passed): Sentry refuses, we say so, nothing is bound.
    world.stub.clock_offset_s = GRANT_LIFE_S + 1
    late = await world.callback(inst2.uuid, code2, state_a)
    assert late.status_code == 400
    assert "Grant has already expired" in late.text
    async with world.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT status, exchange_started_at FROM sentry_installations WHERE uuid = %s",
            (inst2.uuid,),
        )
        assert await cur.fetchone() == {"status": "pending", "exchange_started_at": None}
    # An unknown code: refused by Sentry; it cannot be turned into a JWT recovery.
    inst3, _ = world.stub.add_installation("acme", CLIENT_ID, CLIENT_SECRET)
    with pytest.raises(SentryAuthRefused):
        await world.oauth.claim(inst3.uuid, "not-the-code")
    with pytest.raises(SentryAuthRefused):
        await world.oauth.claim(inst3.uuid, "not-the-code")
    assert world.oauth.recoveries == 0


async def _bound(world: World) -> tuple[str, dict[str, Any]]:
    _, auth = await world.tenant()
    state = await world.start_connect(auth)
    inst, code = world.stub.add_installation("acme", CLIENT_ID, CLIENT_SECRET)
    assert (await world.callback(inst.uuid, code, state)).status_code == 200
    return inst.uuid, await world.connection(inst.uuid)


async def test_refresh_before_expiry_and_after_a_lost_answer(world: World) -> None:
    inst, row = await _bound(world)
    cid = str(row["id"])
    first = world.token(row)
    assert cid not in await world.oauth.due()  # 8 h left
    # An hour before expiry (the keeper's clock moved on): due, refreshed, the old token dead.
    world.oauth.clock = lambda: time.time() + TOKEN_LIFE_S - 1800
    assert cid in await world.oauth.due()
    await world.oauth.refresh(cid)
    second = world.token(await world.connection(inst))
    assert second != first
    assert world.stub.token_for(f"Bearer {first}") is None
    assert world.stub.token_for(f"Bearer {second}") is not None

    # Sentry refreshes, but the answer is lost: the old pair is gone and we do not have the new.
    world.stub.faults.append(Fault("authorizations", "lost"))
    with pytest.raises(SentryUnavailable):
        await world.oauth.refresh(cid)
    stuck = await world.connection(inst)
    assert stuck["refresh_started_at"] is not None
    assert world.stub.token_for(f"Bearer {world.token(stuck)}") is None  # ours is dead now
    assert cid in await world.oauth.due()  # the interrupted refresh is due again
    await world.oauth.refresh(cid)  # ... and recovered with the JWT-bearer grant
    recovered = await world.connection(inst)
    assert world.oauth.recoveries == 1
    assert recovered["refresh_started_at"] is None
    assert world.stub.token_for(f"Bearer {world.token(recovered)}") is not None

    # A refresh token used behind our back (no record of it): refused, then recovered.
    world.oauth.clock = time.time
    app = world.oauth.app
    await app.refresh(inst, world.box.decrypt(recovered["refresh_token_enc"]))
    await world.oauth.refresh(cid)
    assert world.oauth.recoveries == 2
    assert world.stub.token_for(f"Bearer {world.token(await world.connection(inst))}") is not None


async def test_early_refresh_requests_name_the_rejected_token(world: World) -> None:
    inst, row = await _bound(world)
    cid = str(row["id"])
    assert not await world.oauth.request_refresh(cid, token_fingerprint("some older token"))
    assert cid not in await world.oauth.due()
    assert await world.oauth.request_refresh(cid, token_fingerprint(world.token(row)))
    assert cid in await world.oauth.due()

    # The keeper, woken by the request, refreshes it; only one keeper runs at a time.
    stop = asyncio.Event()
    other = OAuth(world.pool, world.box, world.oauth.app, world.oauth.settings)
    keepers = [asyncio.create_task(k.keep(stop, _dsn(world))) for k in (world.oauth, other)]
    try:
        async with asyncio.timeout(10):
            while world.token(await world.connection(inst)) == world.token(row):  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # polls Postgres
        assert [world.oauth.owner, other.owner].count(True) == 1
    finally:
        stop.set()
        await asyncio.gather(*keepers)
    assert world.oauth.refreshes + other.refreshes == 1
    assert cid not in await world.oauth.due()


async def test_uninstall_disables_and_wipes_then_reinstall_resumes(world: World) -> None:
    org, auth = await world.tenant()
    state = await world.start_connect(auth)
    inst, code = world.stub.add_installation("acme", CLIENT_ID, CLIENT_SECRET)
    assert (await world.callback(inst.uuid, code, state)).status_code == 200
    row = await world.connection(inst.uuid)
    svc = await world.api.post("/api/v1/services", headers=auth, json={"name": "C", "slug": "c"})
    mapping = await world.api.post(
        "/api/v1/integrations/sentry/mappings",
        headers=auth,
        json={
            "connection_id": str(row["id"]),
            "sentry_project_slug": "checkout-api",
            "service_id": svc.json()["id"],
        },
    )
    assert mapping.status_code == 201

    await world.oauth.uninstall(inst.uuid)
    gone = await world.connection(inst.uuid)
    assert (gone["enabled"], gone["auth_token_enc"], gone["refresh_token_enc"]) == (
        False,
        None,
        None,
    )
    assert str(row["id"]) not in await world.oauth.due()
    kept = await world.api.get(
        f"/api/v1/integrations/sentry/mappings/{mapping.json()['id']}", headers=auth
    )
    assert kept.status_code == 200
    # A late created webhook for the removed installation cannot revive it.
    with pytest.raises(OAuthRefused):
        await world.oauth.claim(inst.uuid, code)

    # Reinstall: a new installation of the same Sentry organization, the same connection.
    state = await world.start_connect(auth)
    again, code = world.stub.add_installation("acme", CLIENT_ID, CLIENT_SECRET)
    assert (await world.callback(again.uuid, code, state)).status_code == 200
    back = await world.connection(again.uuid)
    assert (back["id"], back["enabled"], str(back["org_id"])) == (row["id"], True, org)


def _record(env: Any) -> ConsumerRecord[bytes, bytes]:
    value = encode(env)
    return ConsumerRecord(
        "sentry-installations", 0, 0, 0, 0, env.key.encode(), value, None, 0, len(value), ()
    )


def _dsn(world: World) -> str:
    return str(world.pool.conninfo)


async def test_nothing_is_bound_until_the_person_confirms_which_organization(world: World) -> None:
    org, auth = await world.tenant()
    _, other_auth = await world.tenant()
    state = await world.start_connect(auth)
    inst, code = world.stub.add_installation("acme", CLIENT_ID, CLIENT_SECRET)
    page = await world.callback(inst.uuid, code, state, confirm=False)
    assert page.status_code == 200
    slug = await world.oauth.org_slug(org)
    assert "<b>acme</b>" in page.text
    assert f"<b>{slug}</b>" in page.text
    async with world.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM sentry_connections WHERE installation_uuid = %s",
            (inst.uuid,),
        )
        assert await cur.fetchone() == {"n": 0}
    form = dict(re.findall(r'name="(\w+)" value="([^"]*)"', page.text))

    async def post(token: str, cookie_state: str) -> httpx.Response:
        world.api.cookies.clear()
        return await world.api.post(
            "/integrations/sentry/oauth/confirm",
            content=urlencode({**form, "token": token}),
            headers={
                "Cookie": f"{COOKIE}={cookie_state}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )

    assert (await post("0" * 64, state)).status_code == 400  # a forged confirmation
    other_state = await world.start_connect(other_auth)  # another browser's confirmation
    assert (await post(form["token"], other_state)).status_code == 400
    done = await post(form["token"], state)
    assert done.status_code == 200
    assert str((await world.connection(inst.uuid))["org_id"]) == org


async def test_a_wrong_or_stale_code_never_disturbs_or_binds_an_exchange(world: World) -> None:
    _, auth = await world.tenant()
    state = await world.start_connect(auth)
    inst, code = world.stub.add_installation("acme", CLIENT_ID, CLIENT_SECRET)
    await world.oauth.claim(inst.uuid, code, "acme")  # the webhook came first
    with pytest.raises(OAuthRefused):  # someone who saw the installation id tries a code
        await world.oauth.claim(inst.uuid, "guessed-code")
    assert (await world.callback(inst.uuid, code, state)).status_code == 200  # unharmed
    assert world.exchanges(inst.uuid) == 1

    # An exchange nobody bound within the grant's ten minutes cannot be bound later.
    late, late_code = world.stub.add_installation("acme", CLIENT_ID, CLIENT_SECRET)
    await world.oauth.claim(late.uuid, late_code, "acme")
    world.oauth.clock = lambda: time.time() + 11 * 60
    state = await world.start_connect(auth)
    refused = await world.callback(late.uuid, late_code, state)
    assert refused.status_code == 409
    assert "install again" in refused.text


async def test_the_keeper_goes_on_past_a_connection_it_cannot_refresh(world: World) -> None:
    inst_bad, bad = await _bound(world)
    inst_good, good = await _bound(world)
    async with world.pool.connection() as conn:  # e.g. encrypted under a key since removed
        await conn.execute(
            "UPDATE sentry_connections SET refresh_token_enc = 'gAAAA-not-a-token',"
            " refresh_requested_at = now() WHERE id = %s",
            (bad["id"],),
        )
        await conn.execute(
            "UPDATE sentry_connections SET refresh_requested_at = now() WHERE id = %s",
            (good["id"],),
        )
    await world.oauth._refresh_due()
    assert world.token(await world.connection(inst_good)) != world.token(good)
    assert world.token(await world.connection(inst_bad)) == world.token(bad)  # left, logged
