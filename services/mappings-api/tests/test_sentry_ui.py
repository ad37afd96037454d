"""The Sentry UI-component callbacks over real Postgres and Kafka (PROTOCOL §4)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import ConsumerRecord
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.events import decode, encode, new_event
from blametrail_common.events.incidents import IncidentOpenedV1, incident_id_for
from blametrail_common.events.installations import SentryInstallationSeenV1
from blametrail_common.kafka import EventProducer, create_consumer, create_producer
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.settings import KafkaSettings
from blametrail_common.signature import sign
from blametrail_mappings_api.app import create_app
from blametrail_mappings_api.repository import Pool, Repository, create_pool
from blametrail_mappings_api.sentry.binding import InstallationLearner, record_installation
from blametrail_mappings_api.sentry.ui_components import SEVERITIES, ui_routes
from blametrail_mappings_api.sentry.ui_guard import AddressWindow, SecretCache
from blametrail_mappings_api.settings import ApiSettings, SentryUiSettings
from blametrail_mappings_api.store.outbox import Relay
from blametrail_projector.projection import Projection
from starlette.applications import Starlette
from starlette.routing import Route

PUBLIC_SECRET = "public-app-secret"
HOST = "https://hooks.example"


@dataclass
class Tenant:
    auth: dict[str, str]
    org: str
    connection: str
    secret: str
    installation: str
    services: list[str]


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    p = create_pool(database_url, 4)
    await p.open()
    yield p
    await p.close()


@pytest.fixture
async def api(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, Repository]]:
    monkeypatch.setenv("BLAMETRAIL_INGEST_PUBLIC_CLIENT_SECRETS", f"old-secret, {PUBLIC_SECRET}")
    repo = Repository(pool, SecretBox(generate_key()))
    app = create_app(ApiSettings(public_ingest_url=HOST), repo, {})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as client:
        yield client, repo


async def _tenant(api: tuple[httpx.AsyncClient, Repository], pool: Pool) -> Tenant:
    client, repo = api
    slug = f"org-{uuid.uuid4().hex[:8]}"
    auth = {"Authorization": f"Bearer {await repo.create_api_key(slug)}"}
    secret = f"secret-{uuid.uuid4().hex}"  # unique: the secret is what names an internal app
    conn = await client.post(
        "/api/v1/integrations/sentry/connections",
        headers=auth,
        json={
            "mode": "internal",
            "sentry_org_slug": f"acme-{uuid.uuid4().hex[:6]}",
            "client_secret": secret,
            "auth_token": "sntrys_token",
        },
    )
    assert conn.status_code == 201, conn.text
    services = []
    for name in ("Payments", "Storefront"):
        svc = await client.post(
            "/api/v1/services", headers=auth, json={"name": name, "slug": name.lower()}
        )
        assert svc.status_code == 201, svc.text
        services.append(svc.json()["id"])
    async with pool.connection() as c:
        row = await (
            await c.execute("SELECT id FROM organizations WHERE slug = %s", (slug,))
        ).fetchone()
    assert row is not None
    return Tenant(auth, str(row["id"]), conn.json()["id"], secret, str(uuid.uuid4()), services)


async def _post(
    client: httpx.AsyncClient, path: str, doc: dict[str, Any], secret: str | None, **headers: str
) -> httpx.Response:
    body = orjson.dumps(doc)
    signed = {"Sentry-App-Signature": sign(body, secret)} if secret is not None else {}
    return await client.post(
        path,
        content=body,
        headers={"Content-Type": "application/json", "Request-ID": uuid.uuid4().hex}
        | signed
        | headers,
    )


async def _options(client: httpx.AsyncClient, what: str, t: Tenant, **query: str) -> Any:
    got = await client.get(
        f"/sentry/options/{what}",
        params={"installationId": t.installation, **query},
        headers={"Sentry-App-Signature": sign(b"", t.secret)},  # GETs sign the empty string
    )
    assert got.status_code == 200, got.text
    return got.json()


def _action(t: Tenant, **settings: str) -> dict[str, Any]:
    return {
        "fields": [{"name": k, "value": v} for k, v in settings.items()],
        "installationId": t.installation,
    }


def _issue_link(t: Tenant, issue_id: int, **fields: str) -> dict[str, Any]:
    """Shaped like fixtures/ui-components/issue-link.create.request.json."""
    return {
        "fields": fields,
        "issueId": issue_id,
        "installationId": t.installation,
        "webUrl": f"https://acme.sentry.io/issues/{issue_id}/",
        "project": {"slug": "checkout-api", "id": 4505123456789012},
        "actor": {"type": "user", "id": 2345678, "name": "Dana Ortiz"},
    }


async def test_every_call_must_carry_a_valid_sentry_app_signature(api: Any, pool: Pool) -> None:
    client = api[0]
    t = await _tenant(api, pool)
    doc = _action(t, severity="sev2", service=t.services[0])
    missing = await _post(client, "/sentry/alert-rule-action", doc, None)
    assert (missing.status_code, set(missing.json())) == (401, {"message"})
    malformed = await _post(
        client, "/sentry/alert-rule-action", doc, None, **{"Sentry-App-Signature": "sha256=abc"}
    )
    assert malformed.status_code == 401
    foreign = await _post(client, "/sentry/alert-rule-action", doc, "not-the-secret")
    # No connection holds that secret: a bad signature (401), as for an OAuth connection; a
    # 404 "Unknown installation" would send a person who just rotated the secret astray.
    assert foreign.status_code == 401
    assert "signature" in foreign.json()["message"].lower()
    body = orjson.dumps(doc)
    tampered = await client.post(
        "/sentry/alert-rule-action",
        content=body.replace(b"sev2", b"sev1"),
        headers={"Sentry-App-Signature": sign(body, t.secret)},
    )
    assert tampered.status_code == 401
    ok = await _post(client, "/sentry/alert-rule-action", doc, t.secret)
    assert ok.status_code == 200, ok.text
    # The webhook header is accepted too (Sentry's example app checks both), never both at once.
    hook = await client.post(
        "/sentry/alert-rule-action",
        content=body,
        headers={"Sentry-Hook-Signature": sign(body, t.secret)},
    )
    assert hook.status_code == 200
    both = await _post(
        client, "/sentry/alert-rule-action", doc, t.secret, **{"Sentry-Hook-Signature": "0" * 64}
    )
    assert both.status_code == 400
    unsigned_get = await client.get(
        "/sentry/options/services", params={"installationId": t.installation}
    )
    assert unsigned_get.status_code == 401
    no_installation = await _post(client, "/sentry/alert-rule-action", {"fields": []}, t.secret)
    assert (no_installation.status_code, "installationId" in no_installation.text) == (400, True)


async def test_a_bound_installation_verifies_with_its_secrets_and_the_public_apps(
    api: Any, pool: Pool
) -> None:
    client = api[0]
    t = await _tenant(api, pool)
    async with pool.connection() as c:
        await c.execute(
            "UPDATE sentry_connections SET mode = 'oauth', installation_uuid = %s WHERE id = %s",
            (t.installation, t.connection),
        )
    doc = _action(t, severity="sev3", service=t.services[1])
    assert (await _post(client, "/sentry/alert-rule-action", doc, PUBLIC_SECRET)).status_code == 200
    assert (await _post(client, "/sentry/alert-rule-action", doc, "old-secret")).status_code == 200
    wrong = await _post(client, "/sentry/alert-rule-action", doc, "someone-else")
    assert wrong.status_code == 401  # known installation, bad signature
    assert wrong.json()["message"]
    async with pool.connection() as c:
        await c.execute(
            "UPDATE sentry_connections SET enabled = false WHERE id = %s", (t.connection,)
        )
    gone = await _post(client, "/sentry/alert-rule-action", doc, PUBLIC_SECRET)
    assert gone.status_code == 404  # a disabled (uninstalled) connection answers nothing


async def test_alert_rule_action_settings_are_validated_on_save(api: Any, pool: Pool) -> None:
    client = api[0]
    a, b = await _tenant(api, pool), await _tenant(api, pool)
    cases = {
        "unknown service": (_action(a, severity="sev2", service=str(uuid.uuid4())), 400),
        "another tenant's service": (_action(a, severity="sev2", service=b.services[0]), 400),
        "not a service id": (_action(a, severity="sev2", service="payments"), 400),
        "no service": (_action(a, severity="sev2"), 400),
        "bad severity": (_action(a, severity="sev9", service=a.services[0]), 400),
        "no severity": (_action(a, service=a.services[0]), 400),
        "bad environment": (
            _action(a, severity="sev1", service=a.services[0], environment="x" * 65),
            400,
        ),
        "valid": (_action(a, severity="sev1", service=a.services[0]), 200),
        "valid with environment": (
            _action(a, severity="sev4", service=a.services[1], environment="production"),
            200,
        ),
    }
    for name, (doc, status) in cases.items():
        got = await _post(client, "/sentry/alert-rule-action", doc, a.secret)
        assert got.status_code == status, (name, got.text)
        assert isinstance(got.json()["message"], str), name
    bad = await _post(
        client,
        "/sentry/alert-rule-action",
        _action(a, severity="critical", service=a.services[0]),
        a.secret,
    )
    assert "sev1" in bad.json()["message"]  # the message Sentry shows says what is allowed


async def test_service_options_list_only_the_tenants_services(api: Any, pool: Pool) -> None:
    client = api[0]
    a, b = await _tenant(api, pool), await _tenant(api, pool)
    listed = await _options(client, "services", a)
    assert listed == [
        {"label": "Payments", "value": a.services[0]},
        {"label": "Storefront", "value": a.services[1]},
    ]  # the shape of fixtures/ui-components/select-options.response.json
    assert [o["value"] for o in await _options(client, "services", a, query="store")] == [
        a.services[1]
    ]
    assert {o["value"] for o in await _options(client, "services", b)} == set(b.services)
    wrong = await client.get(
        "/sentry/options/services",
        params={"installationId": a.installation},
        headers={"Sentry-App-Signature": sign(b"x", a.secret)},
    )
    assert wrong.status_code == 401  # a bad signature, not an unknown installation


async def _relay_and_read(pool: Pool, kafka_settings: KafkaSettings, topic: str) -> list[Any]:
    """Relay the outbox to a fresh topic prefix and read ``topic`` back from the start."""
    kafka = KafkaSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers, topic_prefix=f"u{uuid.uuid4().hex[:6]}."
    )
    await ensure_topics(kafka)
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    try:
        while await Relay(pool, producer).relay_once():
            pass
    finally:
        await producer.stop()
    consumer = create_consumer(kafka, [topic], group_id=None)
    await consumer.start()
    records: list[Any] = []
    try:
        for _ in range(20):
            for batch in (await consumer.getmany(timeout_ms=250)).values():
                records.extend(batch)
            if records:
                break
    finally:
        await consumer.stop()
    return records


async def _project(pool: Pool, records: list[Any]) -> None:
    """What the projector does with the records (its very code)."""
    async with pool.connection() as conn, conn.transaction():
        await Projection(None).apply(conn, records)


async def _forget_older_outbox_rows(pool: Pool) -> None:
    async with pool.connection() as c:
        await c.execute("UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL")


async def test_issue_link_create_opens_an_incident_through_the_outbox(
    api: Any, pool: Pool, kafka_settings: KafkaSettings
) -> None:
    client = api[0]
    await _forget_older_outbox_rows(pool)
    t = await _tenant(api, pool)
    await _forget_older_outbox_rows(pool)  # the tenant's control-plane state events
    doc = _issue_link(t, 5912345678, service=t.services[0], title="KeyError: 'currency'")
    started = time.monotonic()
    created = await _post(client, "/sentry/issue-link/create", doc, t.secret)
    assert time.monotonic() - started < 1.0  # Sentry gives up after 1 s
    assert created.status_code == 201, created.text
    incident = incident_id_for(t.org, "issue", "5912345678")
    assert created.json() == {
        "webUrl": f"{HOST}/incidents/{incident}",
        "project": "payments",
        "identifier": incident[:8],
    }  # the shape of fixtures/ui-components/issue-link.create.response.json
    again = await _post(client, "/sentry/issue-link/create", doc, t.secret)
    assert (again.status_code, again.json()) == (200, created.json())  # a retry opens nothing new

    async with pool.connection() as c:
        links = await (
            await c.execute(
                "SELECT connection_id, sentry_issue_id, web_url FROM sentry_issue_links"
                " WHERE incident_id = %s",
                (incident,),
            )
        ).fetchall()
    assert links == [
        {
            "connection_id": t.connection,
            "sentry_issue_id": "5912345678",
            "web_url": "https://acme.sentry.io/issues/5912345678/",
        }
    ]
    records = await _relay_and_read(pool, kafka_settings, "incident-events")
    assert [r.key for r in records] == [incident.encode()]
    event = decode(records[0].value)
    opened = event.payload
    assert isinstance(opened, IncidentOpenedV1)
    assert (opened.incident_id, opened.tenant_id, opened.service_id, opened.severity) == (
        incident,
        t.org,
        t.services[0],
        "sev2",
    )
    assert (opened.sentry.issue_id, opened.sentry.connection_id, opened.sentry.project_slug) == (
        "5912345678",
        t.connection,
        "checkout-api",
    )
    assert (event.tenant, opened.snapshot.title) == (t.org, "KeyError: 'currency'")

    await _project(pool, records)
    listed = (await client.get("/api/v1/incidents", headers=t.auth)).json()["items"]
    assert [(i["incident_id"], i["service_id"], i["status"]) for i in listed] == [
        (incident, t.services[0], "open")
    ]
    # The pipeline's incident for this issue exists now: create links to it, opens nothing.
    other_service = _issue_link(t, 5912345678, service=t.services[1])
    assert (
        await _post(client, "/sentry/issue-link/create", other_service, t.secret)
    ).json() == created.json()
    async with pool.connection() as c:
        unsent = await (
            await c.execute("SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL")
        ).fetchone()
    assert unsent == {"n": 0}


async def test_issue_link_create_refuses_bad_choices(api: Any, pool: Pool) -> None:
    client = api[0]
    a, b = await _tenant(api, pool), await _tenant(api, pool)
    for fields, status in (
        ({"service": b.services[0]}, 400),  # another tenant's service
        ({"service": str(uuid.uuid4())}, 400),
        ({}, 400),
        ({"service": a.services[0], "severity": "urgent"}, 400),
    ):
        got = await _post(
            client, "/sentry/issue-link/create", _issue_link(a, 77, **fields), a.secret
        )
        assert (got.status_code, bool(got.json()["message"])) == (status, True), fields
    no_issue = _issue_link(a, 77, service=a.services[0])
    del no_issue["issueId"]
    assert (await _post(client, "/sentry/issue-link/create", no_issue, a.secret)).status_code == 400
    async with pool.connection() as c:
        links = await (
            await c.execute(
                "SELECT count(*) AS n FROM sentry_issue_links WHERE connection_id = %s",
                (a.connection,),
            )
        ).fetchone()
    assert links == {"n": 0}


async def test_link_to_an_existing_incident_and_never_to_another_tenants(
    api: Any, pool: Pool, kafka_settings: KafkaSettings
) -> None:
    client = api[0]
    await _forget_older_outbox_rows(pool)
    a, b = await _tenant(api, pool), await _tenant(api, pool)
    await _forget_older_outbox_rows(pool)
    created = await _post(
        client,
        "/sentry/issue-link/create",
        _issue_link(a, 1001, service=a.services[1], title="Timeout in cart", severity="sev1"),
        a.secret,
    )
    assert created.status_code == 201, created.text
    await _project(pool, await _relay_and_read(pool, kafka_settings, "incident-events"))
    incident = incident_id_for(a.org, "issue", "1001")

    options = await _options(client, "incidents", a)
    assert [o["value"] for o in options] == [incident]
    assert "Timeout in cart" in options[0]["label"]
    assert await _options(client, "incidents", b) == []

    linked = await _post(
        client, "/sentry/issue-link/link", _issue_link(a, 1002, incident=incident), a.secret
    )
    assert (linked.status_code, linked.json()) == (200, created.json())

    stolen = await _post(
        client, "/sentry/issue-link/link", _issue_link(b, 2002, incident=incident), b.secret
    )
    assert stolen.status_code == 404
    assert "incident" in stolen.json()["message"]
    # B's signature on A's installation does not make B's call A's.
    b_as_a = _issue_link(b, 2003, incident=incident) | {"installationId": a.installation}
    # (A's installation is known by now: B's secret is a bad signature for it.)
    assert (await _post(client, "/sentry/issue-link/link", b_as_a, b.secret)).status_code == 401
    for bad in ("not-a-uuid", str(uuid.uuid4()), ""):
        got = await _post(
            client, "/sentry/issue-link/link", _issue_link(a, 1003, incident=bad), a.secret
        )
        assert got.status_code in (400, 404), bad
        assert got.json()["message"]

    async with pool.connection() as c:
        rows = await (
            await c.execute(
                "SELECT connection_id, sentry_issue_id FROM sentry_issue_links"
                " WHERE incident_id = %s ORDER BY sentry_issue_id",
                (incident,),
            )
        ).fetchall()
    assert rows == [
        {"connection_id": a.connection, "sentry_issue_id": "1001"},
        {"connection_id": a.connection, "sentry_issue_id": "1002"},
    ]


async def test_an_answer_that_would_be_late_is_a_message_not_a_timeout(
    api: Any, pool: Pool
) -> None:
    t = await _tenant(api, pool)
    slow = Starlette(routes=ui_routes(pool, api[1].box, HOST, SentryUiSettings(deadline_s=0.0)))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=slow), base_url="http://api"
    ) as client:
        got = await _post(
            client,
            "/sentry/alert-rule-action",
            _action(t, severity="sev2", service=t.services[0]),
            t.secret,
        )
    assert got.status_code == 503
    assert got.json()["message"]


def _uris(node: Any, method: str = "POST") -> set[tuple[str, str]]:
    if isinstance(node, list):
        return {u for item in node for u in _uris(item, method)}
    if not isinstance(node, dict):
        return set()
    found = (
        {(("GET" if node.get("type") == "select" else method), node["uri"])}
        if "uri" in node
        else set()
    )
    return found | {u for v in node.values() for u in _uris(v, method)}


def test_the_sentry_app_schema_points_at_the_routes_served() -> None:
    schema = orjson.loads(
        (Path(__file__).parents[3] / "deploy/sentry-app/schema.json").read_bytes()
    )
    box = SecretBox(generate_key())
    served = {
        (m, r.path)
        for r in ui_routes(create_pool("postgresql://unused"), box, HOST)
        if isinstance(r, Route)
        for m in r.methods or ()
        if m != "HEAD"
    }
    assert _uris(schema) == served
    issue_link, action = schema["elements"]
    assert issue_link["type"] == "issue-link"
    assert {f["name"] for f in issue_link["create"]["required_fields"]} == {"title", "service"}
    assert [f["name"] for f in issue_link["link"]["required_fields"]] == ["incident"]
    settings = action["settings"]
    assert (action["type"], settings["type"]) == ("alert-rule-action", "alert-rule-settings")
    assert len(settings["description"]) <= 140
    severity = next(f for f in settings["required_fields"] if f["name"] == "severity")
    assert [v for v, _ in severity["options"]] == list(SEVERITIES)
    assert [f["name"] for f in settings["optional_fields"]] == ["environment"]


async def _installation_of(pool: Pool, connection: str) -> str | None:
    async with pool.connection() as c:
        row = await (
            await c.execute(
                "SELECT installation_uuid FROM sentry_connections WHERE id = %s", (connection,)
            )
        ).fetchone()
    assert row is not None
    return row["installation_uuid"]


async def test_an_internal_connection_answers_only_for_its_own_installation(
    api: Any, pool: Pool
) -> None:
    client = api[0]
    t = await _tenant(api, pool)
    doc = _action(t, severity="sev2", service=t.services[0])
    # Before any webhook: a GET (its query is not signed) is answered but teaches nothing.
    assert await _options(client, "services", t)
    assert await _installation_of(pool, t.connection) is None
    # A signed POST names the installation inside what was signed: the connection learns it.
    assert (await _post(client, "/sentry/alert-rule-action", doc, t.secret)).status_code == 200
    assert await _installation_of(pool, t.connection) == t.installation
    async with pool.connection() as c:  # and tells the other services (cp-connections)
        told = await (
            await c.execute(
                "SELECT count(*) AS n FROM outbox WHERE topic = 'cp-connections'"
                " AND key = %s AND position(%s in convert_from(value, 'UTF8')) > 0",
                (t.connection.encode(), t.installation),
            )
        ).fetchone()
    assert told == {"n": 1}
    # From now on a random installation id is refused, signed or not, GET or POST (a 401: its
    # secret is no longer even tried for an installation it is not bound to, issue 17 M3).
    stranger = {**doc, "installationId": str(uuid.uuid4())}
    refused = await _post(client, "/sentry/alert-rule-action", stranger, t.secret)
    assert refused.status_code == 401, refused.text
    assert "not the one" in refused.json()["message"]
    assert await _installation_of(pool, t.connection) == t.installation
    got = await client.get(
        "/sentry/options/services",
        params={"installationId": str(uuid.uuid4())},
        headers={"Sentry-App-Signature": sign(b"", t.secret)},
    )
    assert (got.status_code, "not the one" in got.json()["message"]) == (401, True)
    # Its own installation with a wrong signature (a secret rotated in Sentry only): 401.
    rotated = await _post(client, "/sentry/alert-rule-action", doc, "rotated-in-sentry")
    assert (rotated.status_code, "signature" in rotated.json()["message"].lower()) == (401, True)
    assert (await _post(client, "/sentry/alert-rule-action", doc, t.secret)).status_code == 200
    too_long = await _post(
        client, "/sentry/alert-rule-action", {**doc, "installationId": "x" * 65}, t.secret
    )
    assert too_long.status_code == 400


async def test_connections_sharing_a_secret_are_told_apart_by_their_installation(
    api: Any, pool: Pool
) -> None:
    client = api[0]
    t = await _tenant(api, pool)
    second = await client.post(
        "/api/v1/integrations/sentry/connections",
        headers=t.auth,
        json={
            "mode": "internal",
            "sentry_org_slug": f"acme-{uuid.uuid4().hex[:6]}",
            "client_secret": t.secret,  # the same internal integration, connected twice
            "auth_token": "sntrys_other",
        },
    )
    assert second.status_code == 201, second.text
    other = second.json()["id"]
    doc = _issue_link(t, 5912345601, service=t.services[0])
    ambiguous = await _post(client, "/sentry/issue-link/create", doc, t.secret)
    assert ambiguous.status_code == 409
    message = ambiguous.json()["message"]
    assert "share this client secret" in message
    assert "organization" not in message
    # Their webhooks named their installations (what the installation learner records).
    theirs = str(uuid.uuid4())
    assert await record_installation(pool, t.connection, t.installation, replace=True)
    assert await record_installation(pool, other, theirs, replace=True)
    for installation, connection, issue in (
        (t.installation, t.connection, 5912345602),
        (theirs, other, 5912345603),
    ):
        link = {**_issue_link(t, issue, service=t.services[0]), "installationId": installation}
        made = await _post(client, "/sentry/issue-link/create", link, t.secret)
        assert made.status_code == 201, made.text
        async with pool.connection() as c:
            row = await (
                await c.execute(
                    "SELECT connection_id FROM sentry_issue_links WHERE sentry_issue_id = %s",
                    (str(issue),),
                )
            ).fetchone()
        assert row == {"connection_id": connection}


async def test_secret_shared_across_organizations_is_still_named_so(api: Any, pool: Pool) -> None:
    client = api[0]
    a, b = await _tenant(api, pool), await _tenant(api, pool)
    async with pool.connection() as c:
        await c.execute(
            "UPDATE sentry_connections SET client_secrets_enc = (SELECT client_secrets_enc"
            " FROM sentry_connections WHERE id = %s) WHERE id = %s",
            (a.connection, b.connection),
        )
    got = await _post(client, "/sentry/alert-rule-action", _action(a, severity="sev2"), a.secret)
    assert got.status_code == 409
    assert "more than one BlameTrail organization" in got.json()["message"]


async def test_a_webhook_learnt_installation_replaces_an_older_one_never_anothers(
    api: Any, pool: Pool
) -> None:
    a, b = await _tenant(api, pool), await _tenant(api, pool)
    assert await record_installation(pool, a.connection, a.installation, replace=False)
    newer = str(uuid.uuid4())
    # A UI call never overwrites; a webhook signed for the connection does.
    assert (await record_installation(pool, a.connection, newer, replace=False) or {}).get(
        "installation_uuid"
    ) == a.installation
    assert (await record_installation(pool, a.connection, newer, replace=True) or {}).get(
        "installation_uuid"
    ) == newer
    # b's webhooks cannot take a's installation.
    row = await record_installation(pool, b.connection, newer, replace=True)
    assert row is not None
    assert row["installation_uuid"] is None
    assert await record_installation(pool, "not-a-uuid", newer, replace=True) is None


def _seen(connection: str, installation: str, offset: int) -> ConsumerRecord[bytes, bytes]:
    """What the normalizer puts on ``sentry-installations`` for an internal connection's webhook."""
    seen = SentryInstallationSeenV1(
        installation_uuid=installation,
        connection_id=connection,
        raw_event_id=str(uuid.uuid4()),
        received_at=datetime.now(UTC),
    )
    value = encode(new_event(seen, key=installation))
    return ConsumerRecord(
        "sentry-installations",
        0,
        offset,
        0,
        0,
        installation.encode(),
        value,
        None,
        0,
        len(value),
        (),
    )


async def test_the_installation_a_webhook_names_is_recorded_and_then_required(
    api: Any, pool: Pool
) -> None:
    client = api[0]
    t = await _tenant(api, pool)
    learner = InstallationLearner(pool)
    junk = ConsumerRecord(
        "sentry-installations", 0, 0, 0, 0, b"k", b"not an event", None, 0, 12, ()
    )
    await learner.handle([junk, _seen(t.connection, t.installation, 1)])
    await learner.handle([_seen(t.connection, t.installation, 1)])  # redelivered: no change
    assert await _installation_of(pool, t.connection) == t.installation
    # The first UI call already names a known installation; another one is refused.
    doc = _action(t, severity="sev2", service=t.services[0])
    assert (await _post(client, "/sentry/alert-rule-action", doc, t.secret)).status_code == 200
    other = {**doc, "installationId": str(uuid.uuid4())}
    assert (await _post(client, "/sentry/alert-rule-action", other, t.secret)).status_code == 401
    # The integration made anew in Sentry: its webhooks name a new installation, which wins.
    anew = str(uuid.uuid4())
    await learner.handle([_seen(t.connection, anew, 2)])
    assert await _installation_of(pool, t.connection) == anew
    assert (
        await _post(client, "/sentry/alert-rule-action", other | {"installationId": anew}, t.secret)
    ).status_code == 200
    assert learner.recorded == 3


class CountingBox(SecretBox):
    """A real SecretBox that counts what it decrypts (the cost M3 is about)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.decrypted: list[str] = []

    def decrypt(self, token: str) -> str:
        self.decrypted.append(token)
        return super().decrypt(token)


async def test_an_unknown_installation_costs_no_bound_secret_and_is_limited_per_address(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17 M3: a call naming an installation no connection is bound to tries only the
    internal connections still waiting for theirs (a bound one's secret is not decrypted, nor
    HMACed), each secret is decrypted once (a rotation decrypts the new ones), and such calls
    are limited per client address (429 with Retry-After; another address and bound calls go
    on)."""
    monkeypatch.setenv("BLAMETRAIL_INGEST_PUBLIC_CLIENT_SECRETS", PUBLIC_SECRET)
    monkeypatch.setenv("BLAMETRAIL_API_SENTRY_UI_UNBOUND_PER_MINUTE", "4")
    box = CountingBox(generate_key())
    repo = Repository(pool, box)
    app = create_app(ApiSettings(public_ingest_url=HOST), repo, {})

    def client_from(host: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(host, 4242))
        return httpx.AsyncClient(transport=transport, base_url="http://api")

    async with client_from("203.0.113.7") as a, client_from("203.0.113.8") as b:
        bound = await _tenant((a, repo), pool)
        waiting = await _tenant((a, repo), pool)  # no installation yet
        doc = _action(bound, severity="sev2", service=bound.services[0])
        box.decrypted.clear()
        assert (await _post(a, "/sentry/alert-rule-action", doc, bound.secret)).status_code == 200
        learning = list(box.decrypted)  # bound was unbound then: every candidate was tried
        assert await _installation_of(pool, bound.connection) == bound.installation
        async with pool.connection() as c:
            rows = await (
                await c.execute(
                    "SELECT id, client_secrets_enc FROM sentry_connections WHERE id = ANY(%s)",
                    ([bound.connection, waiting.connection],),
                )
            ).fetchall()
        enc = {str(r["id"]): list(r["client_secrets_enc"]) for r in rows}
        assert set(enc[waiting.connection]) | set(enc[bound.connection]) <= set(learning)
        mine = enc[waiting.connection] + enc[bound.connection]
        assert [learning.count(e) for e in mine] == [1] * len(mine)  # each decrypted once
        stranger = {**doc, "installationId": str(uuid.uuid4())}
        box.decrypted.clear()
        first = await _post(a, "/sentry/alert-rule-action", stranger, bound.secret)
        assert (first.status_code, "not the one" in first.json()["message"]) == (401, True)
        again = await _post(a, "/sentry/alert-rule-action", stranger, bound.secret)
        assert again.status_code == 401
        assert box.decrypted == []  # the bound secret is not tried, the candidates' are cached
        # 4 a minute from one address, the learning POST (unbound then) the 1st: this the 4th
        more = await _post(a, "/sentry/alert-rule-action", stranger, bound.secret)
        assert more.status_code == 401
        limited = await _post(a, "/sentry/alert-rule-action", stranger, bound.secret)
        assert limited.status_code == 429, limited.text
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert "Too many calls" in limited.json()["message"]
        assert (
            await _post(b, "/sentry/alert-rule-action", stranger, bound.secret)
        ).status_code == 401
        # bound calls are not limited; the waiting connection still learns its installation
        assert (await _post(a, "/sentry/alert-rule-action", doc, bound.secret)).status_code == 200
        learn = _action(waiting, severity="sev1", service=waiting.services[0])
        assert (
            await _post(b, "/sentry/alert-rule-action", learn, waiting.secret)
        ).status_code == 200
        # a rotation stores a new ciphertext: the new secret is decrypted and verifies at once
        rotated = await a.patch(
            f"/api/v1/integrations/sentry/connections/{bound.connection}",
            headers=bound.auth,
            json={"client_secret": "rotated-secret"},
        )
        assert rotated.status_code == 200, rotated.text
        box.decrypted.clear()
        assert (
            await _post(a, "/sentry/alert-rule-action", doc, "rotated-secret")
        ).status_code == 200
        assert box.decrypted  # the rotated ciphertexts were not in the cache


def test_the_secret_cache_and_the_address_window_are_bounded() -> None:
    cache = SecretCache(size=2)
    calls: list[str] = []

    def decrypt(enc: str) -> str | None:
        calls.append(enc)
        return None if enc == "bad" else enc.upper()

    assert cache.get("c1", ["x", "bad"], decrypt) == ["X"]
    assert cache.get("c1", ["x", "bad"], decrypt) == ["X"]
    assert calls == ["x", "bad"]
    cache.get("c2", ["y"], decrypt)
    cache.get("c1", ["z", "x"], decrypt)  # rotated: a new entry, the oldest (c1 as was) out
    assert len(cache) == 2
    cache.get("c1", ["x", "bad"], decrypt)
    assert calls[-2:] == ["x", "bad"]

    now = [0.0]
    window = AddressWindow(limit=2, window_s=60, addresses=2, clock=lambda: now[0])
    assert [window.take("a"), window.take("a")] == [None, None]
    assert window.take("a") == 60.0
    now[0] = 59.5
    assert window.take("a") == 0.5
    now[0] = 60.0
    assert window.take("a") is None  # a new window
    window.take("b")
    window.take("c")  # over 2 addresses: the oldest forgotten
    assert len(window) == 2
    assert AddressWindow(limit=0).take("a") is None


async def test_a_webhook_takes_an_installation_a_ui_call_claimed_for_another_connection(
    api: Any, pool: Pool
) -> None:
    """Issue 17 L1: another tenant's connection claims the victim's installation with a UI call
    signed by its own secret; the victim's webhook naming it then takes it (the claimer's is
    cleared and told on cp-connections), and UI calls for it are the victim's. A webhook's
    binding is not taken by another webhook's, nor by a UI call."""
    client = api[0]
    victim, mallory = await _tenant(api, pool), await _tenant(api, pool)
    claim = {**_action(mallory, severity="sev2", service=mallory.services[0])}
    claim["installationId"] = victim.installation
    assert (
        await _post(client, "/sentry/alert-rule-action", claim, mallory.secret)
    ).status_code == 200
    assert await _installation_of(pool, mallory.connection) == victim.installation
    learner = InstallationLearner(pool)
    await learner.handle([_seen(victim.connection, victim.installation, 1)])
    assert await _installation_of(pool, victim.connection) == victim.installation
    assert await _installation_of(pool, mallory.connection) is None
    async with pool.connection() as c:  # created, claimed, released: the last names none
        told = await (
            await c.execute(
                "SELECT position(%s in convert_from(value, 'UTF8')) > 0 AS names FROM outbox"
                " WHERE topic = 'cp-connections' AND key = %s ORDER BY id",
                (victim.installation, mallory.connection.encode()),
            )
        ).fetchall()
    assert [r["names"] for r in told] == [False, True, False]
    doc = _action(victim, severity="sev2", service=victim.services[0])
    assert (await _post(client, "/sentry/alert-rule-action", doc, victim.secret)).status_code == 200
    assert (
        await _post(client, "/sentry/alert-rule-action", claim, mallory.secret)
    ).status_code == 401
    # a webhook-proven binding stays: another connection's webhook naming it does not take it
    await learner.handle([_seen(mallory.connection, victim.installation, 2)])
    assert await _installation_of(pool, victim.connection) == victim.installation
    assert await _installation_of(pool, mallory.connection) is None


async def test_a_ui_learned_binding_proven_by_its_own_webhook_is_kept(api: Any, pool: Pool) -> None:
    """A UI call's binding that its own connection's webhook then names becomes a webhook's:
    another connection's webhook cannot take it afterwards."""
    client = api[0]
    t, other = await _tenant(api, pool), await _tenant(api, pool)
    doc = _action(t, severity="sev2", service=t.services[0])
    assert (await _post(client, "/sentry/alert-rule-action", doc, t.secret)).status_code == 200
    learner = InstallationLearner(pool)
    await learner.handle([_seen(t.connection, t.installation, 1)])
    await learner.handle([_seen(other.connection, t.installation, 2)])
    assert await _installation_of(pool, t.connection) == t.installation
    assert await _installation_of(pool, other.connection) is None
