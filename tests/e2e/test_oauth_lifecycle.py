"""The public app's whole life cycle for two Sentry organizations at once, on real Kafka and
Postgres with the Sentry stand-in: connect link -> install (webhook and redirect racing) -> one
grant exchange -> verify -> mapped webhook -> enriched incident -> the stand-in's clock past 8 h
(the enricher's token is refused: it asks the keeper, which refreshes) -> enriched again ->
uninstall (audited ``uninstalled``, the other organization unaffected) -> reinstall resumes."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.db import migrate
from blametrail_common.events import ConnectionStateV1
from blametrail_common.kafka import EventProducer, consume, create_consumer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.kafka.pgsink import run_into_postgres
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.sentry_api import HttpxSentryApi, RetryPolicy
from blametrail_common.settings import KafkaSettings
from blametrail_common.signature import sign
from blametrail_common.testing import background, fixture_bytes
from blametrail_common.topics import topic_name
from blametrail_devstack.ingest_testing import TEST_SECRET, make_settings, running_ingest
from blametrail_devstack.pytest_plugin import Infra, create_database
from blametrail_enricher.credentials import ConnectionCredentials
from blametrail_enricher.pipeline import Enricher
from blametrail_ingest.connections import ConnectionSecrets
from blametrail_mappings_api.app import create_app
from blametrail_mappings_api.repository import Pool, Repository, create_pool
from blametrail_mappings_api.sentry.client import SentryApp
from blametrail_mappings_api.sentry.oauth import OAuth
from blametrail_mappings_api.sentry.state import COOKIE
from blametrail_mappings_api.settings import ApiSettings, OAuthSettings
from blametrail_mappings_api.store.outbox import Relay
from blametrail_normalizer.app import create_app as create_normalizer
from blametrail_normalizer.settings import NormalizerSettings
from blametrail_projector.projection import PROJECTED_TOPICS, Projection
from blametrail_sentry_stub import StubState, serve
from blametrail_sentry_stub.state import TOKEN_LIFE_S

CLIENT_ID = "bt-public-app"


def webhook(name: str, **changes: Any) -> tuple[bytes, dict[str, str]]:
    """A fixture webhook re-addressed (installation, issue id, code), signed as the public app."""
    doc = orjson.loads(fixture_bytes(f"webhooks/{name}.json"))
    inst = changes.get("installation")
    if inst:
        doc["installation"]["uuid"] = inst
    if "installation" in doc["data"]:
        doc["data"]["installation"].update(uuid=inst, organization={"slug": changes["org"]})
        if "code" in changes:
            doc["data"]["installation"]["code"] = changes["code"]
    if "issue" in changes:
        doc["data"]["issue"]["id"] = changes["issue"]
    body = orjson.dumps(doc)
    resource, _, _ = name.partition(".")
    headers = {
        "Content-Type": "application/json",
        "Request-ID": str(uuid.uuid4()),
        "Sentry-Hook-Resource": resource,
        "Sentry-Hook-Timestamp": "1773482400",
        "Sentry-Hook-Signature": sign(body, TEST_SECRET),
    }
    return body, headers


async def _at_least(value: int, wanted: int) -> bool:
    return value >= wanted


async def _until(check: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 60) -> Any:
    async with asyncio.timeout(timeout_s):
        while True:
            found = await check()
            if found:
                return found
            await asyncio.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")  # pragma: no cover


async def test_two_organizations_install_enrich_refresh_uninstall_reinstall(
    kafka_settings: KafkaSettings, infra: Infra, tmp_path: Path
) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"o{uuid.uuid4().hex[:6]}."
    )
    await ensure_topics(kafka)
    box = SecretBox(generate_key())
    stub = StubState()
    # A database of its own: the token keeper looks at every OAuth connection there is.
    database_url = create_database(infra.server_dsn, f"bt_oauth_e2e_{uuid.uuid4().hex[:8]}")
    migrate(database_url)
    pool: Pool = create_pool(database_url, 8)
    await pool.open()
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    http = httpx.AsyncClient()
    tables = [CompactedTable(kafka, "cp-connections", ConnectionStateV1) for _ in range(2)]
    normalizer = create_normalizer(
        NormalizerSettings(app_id=f"o-norm-{uuid.uuid4().hex[:6]}"), kafka
    )
    async with serve(stub) as stub_url:
        settings = OAuthSettings(sentry_url=stub_url, client_id=CLIENT_ID, check_s=0.5)
        oauth = OAuth(pool, box, SentryApp(http, stub_url, CLIENT_ID, TEST_SECRET), settings)
        repo = Repository(pool, box)
        api = httpx.AsyncClient(
            transport=httpx.ASGITransport(
                app=create_app(ApiSettings(public_ingest_url="http://edge"), repo, {}, None, oauth)
            ),
            base_url="http://edge",
        )
        sentry_api = HttpxSentryApi(http, RetryPolicy(base_delay_s=0.05, max_rate_limit_wait_s=10))
        enricher = Enricher(
            sentry_api,
            ConnectionCredentials(tables[1], box, producer),
            producer,
            links=sentry_api,
            incident_url="https://blametrail.example/incidents/{incident_id}",
        )

        async def relay(stop: asyncio.Event) -> None:
            await Relay(pool, producer).run(stop, database_url)

        async def control_plane(stop: asyncio.Event) -> None:  # as the mappings-api runs it
            topics = ["sentry-installations", "oauth-refresh-requests"]
            group = f"o-api-{uuid.uuid4().hex[:6]}"
            keeper = asyncio.create_task(oauth.keep(stop, database_url))
            try:
                await consume(kafka, topics, group, oauth.handle, stop)
            finally:
                await keeper

        async def enrich(stop: asyncio.Event) -> None:
            group = f"o-enr-{uuid.uuid4().hex[:6]}"
            await consume(kafka, ["incident-events"], group, enricher.handle, stop)

        async def project(stop: asyncio.Event) -> None:
            consumer = create_consumer(kafka, [], f"o-proj-{uuid.uuid4().hex[:6]}")
            await consumer.start()
            try:
                topics = [topic_name(t, kafka.topic_prefix) for t in PROJECTED_TOPICS]
                await run_into_postgres(
                    consumer, topics, database_url, "o-projection", Projection(producer).apply, stop
                )
            finally:
                await consumer.stop()

        for t in tables:
            await t.start()
        normalizer.app.finalize()
        await normalizer.app.start()
        try:
            async with (
                background(relay, control_plane, enrich, project),
                running_ingest(
                    kafka, make_settings(tmp_path), ConnectionSecrets(tables[0], box)
                ) as (ingest_url, _),
                httpx.AsyncClient(base_url=ingest_url) as hooks,
            ):
                org_of = Org.factory(api, repo, hooks, stub, pool, box, normalizer)
                acme, globex = await org_of("acme"), await org_of("globex")
                # Both install at once; each org's webhook and redirect race each other.
                await asyncio.gather(acme.install(), globex.install())
                # Both installation webhooks handled too, whichever came first: one exchange each.
                await _until(lambda: _at_least(oauth.installation_events, 2), "the webhooks")
                for org in (acme, globex):
                    assert stub.installations[org.installation].status == "installed"
                    assert org.exchanges() == 1  # one grant, one exchange
                await asyncio.gather(acme.map_project(), globex.map_project())
                await asyncio.gather(acme.incident("101"), globex.incident("201"))
                assert (await acme.issues(), await globex.issues()) == ({"101"}, {"201"})

                # Eight hours later at Sentry: every token we hold is refused.
                tokens = {o.name: await o.token() for o in (acme, globex)}
                stub.clock_offset_s = TOKEN_LIFE_S + 60
                assert all(stub.token_for(f"Bearer {t}") is None for t in tokens.values())
                await asyncio.gather(acme.incident("102"), globex.incident("202"))
                for org in (acme, globex):  # the keeper refreshed each once, on request
                    assert await org.token() != tokens[org.name]
                assert oauth.refreshes == 2
                assert oauth.recoveries == 0

                # acme uninstalls: disabled, tokens wiped, its webhooks audited; globex goes on.
                await acme.post("installation.deleted", installation=acme.installation, org="acme")
                row = await _until(acme.disabled, "the uninstall to reach the control plane")
                assert (row["auth_token_enc"], row["refresh_token_enc"]) == (None, None)
                await acme.post("issue.created", installation=acme.installation, issue="103")
                audited = await _until(acme.uninstalled_audit, "an uninstalled audit record")
                assert audited["resource"] == "issue"
                await globex.incident("203")

                # acme reinstalls: the same connection, its mapping resumes.
                connection = acme.connection
                await acme.install()
                assert acme.connection == connection
                await _until(lambda: _at_least(oauth.installation_events, 4), "the webhooks")
                assert acme.exchanges() == 1
                await acme.incident("104")
        finally:
            await normalizer.close()
            for t in tables:
                await t.stop()
    await api.aclose()
    await http.aclose()
    await producer.stop()
    await pool.close()


class Org:
    """One BlameTrail organization connecting one Sentry organization of the same name."""

    def __init__(self, name: str, auth: dict[str, str], org: str, ctx: tuple[Any, ...]) -> None:
        self.name, self.auth, self.org = name, auth, org
        self.api, self.repo, self.hooks, self.stub, self.pool, self.box, self.normalizer = ctx
        self.installation, self.connection = "", ""

    @classmethod
    def factory(cls, *ctx: Any) -> Callable[[str], Awaitable[Org]]:
        async def make(name: str) -> Org:
            repo = ctx[1]
            key = await repo.create_api_key(f"{name}-{uuid.uuid4().hex[:6]}")
            org = await repo.org_for_key(f"Bearer {key}")
            return cls(name, {"Authorization": f"Bearer {key}"}, org, ctx)

        return make

    async def post(self, name: str, **changes: Any) -> None:
        body, headers = webhook(name, **changes)
        sent = await self.hooks.post("/webhooks/sentry", content=body, headers=headers)
        assert sent.status_code == 200, sent.text

    async def install(self) -> None:
        link = await self.api.post("/api/v1/integrations/sentry/connect", headers=self.auth)
        opened = await self.api.get(link.json()["url"])
        assert opened.status_code == 302
        state = opened.cookies[COOKIE]
        inst, code = self.stub.add_installation(self.name, CLIENT_ID, TEST_SECRET)
        self.installation = inst.uuid

        async def redirect() -> None:
            cookie = {"Cookie": f"{COOKIE}={state}"}
            page = await self.api.get(
                "/integrations/sentry/oauth/callback",
                params={"installationId": inst.uuid, "code": code, "orgSlug": self.name},
                headers=cookie,
            )
            assert page.status_code == 200, page.text
            form = dict(re.findall(r'name="(\w+)" value="([^"]*)"', page.text))
            done = await self.api.post(  # the person presses Connect
                "/integrations/sentry/oauth/confirm",
                content=urlencode(form),
                headers={**cookie, "Content-Type": "application/x-www-form-urlencoded"},
            )
            assert done.status_code == 200, done.text

        await asyncio.gather(
            self.post("installation.created", installation=inst.uuid, org=self.name, code=code),
            redirect(),
        )
        row = await self._row()
        self.connection = str(row["id"])
        await _until(
            lambda: self._normalizer_knows(inst.uuid), "the normalizer to learn the connection"
        )

    async def _normalizer_knows(self, installation: str) -> bool:
        conn = self.normalizer.lookup.connection_for_installation(installation)
        return conn is not None and conn.enabled

    def exchanges(self) -> int:
        path = f"/api/0/sentry-app-installations/{self.installation}/authorizations/"
        return sum(1 for r in self.stub.requests if r["path"] == path)

    async def map_project(self) -> None:
        svc = await self.api.post(
            "/api/v1/services", headers=self.auth, json={"name": "Checkout", "slug": "checkout"}
        )
        mapped = await self.api.post(
            "/api/v1/integrations/sentry/mappings",
            headers=self.auth,
            json={
                "connection_id": self.connection,
                "sentry_project_slug": "checkout-api",
                "service_id": svc.json()["id"],
            },
        )
        assert mapped.status_code == 201, mapped.text

        async def known() -> bool:
            return self.normalizer.lookup.mapping(self.connection, "checkout-api") is not None

        await _until(known, "the normalizer to learn the mapping")

    async def incident(self, issue: str) -> dict[str, Any]:
        """Post a new issue webhook; the incident, once enriched with the current token."""
        await self.post("issue.created", installation=self.installation, issue=issue)

        async def enriched() -> dict[str, Any] | None:
            items = (await self.api.get("/api/v1/incidents", headers=self.auth)).json()["items"]
            for item in items:
                full = (
                    await self.api.get(
                        f"/api/v1/incidents/{item['incident_id']}", headers=self.auth
                    )
                ).json()
                e = full.get("enrichment")
                if full["sentry"]["issue_id"] == issue and e and e["status"] == "enriched":
                    return dict(full)
            return None

        return dict(await _until(enriched, f"incident {issue} of {self.name} enriched"))

    async def issues(self) -> set[str]:
        """The Sentry issue ids of the incidents this organization sees."""
        items = (await self.api.get("/api/v1/incidents", headers=self.auth)).json()["items"]
        return {i["sentry"]["issue_id"] for i in items}

    async def _row(self) -> dict[str, Any]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM sentry_connections WHERE installation_uuid = %s",
                (self.installation,),
            )
            row = await cur.fetchone()
        assert row is not None
        return dict(row)

    async def token(self) -> str:
        return str(self.box.decrypt((await self._row())["auth_token_enc"]))

    async def disabled(self) -> dict[str, Any] | None:
        row = await self._row()
        return None if row["enabled"] else row

    async def uninstalled_audit(self) -> dict[str, Any] | None:
        got = await self.api.get(
            "/api/v1/integrations/sentry/audit", params={"reason": "uninstalled"}, headers=self.auth
        )
        items = got.json()["items"]
        return dict(items[0]) if items else None
