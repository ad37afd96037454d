"""Seeds a demo tenant on a running stack and pushes one signed webhook through it.

Creates (once; recorded in ``.local/stack.env``) an organization ``demo`` with an API key, a
service, an internal connection to the local Sentry stand-in, and a mapping of the fixtures'
project ``checkout-api``, and an admin for the web (its sign-in in ``.local/demo-credentials``);
then posts the signed ``issue.created`` fixture to ingest and waits
until that webhook's incident (read by its id), enriched and with ranked suspects, is visible in
the API. Run again on a used stack, it finds the same incident.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from blametrail_common.events.incidents import incident_id_for
from blametrail_common.testing import signed_fixture

from blametrail_devstack.services import STUB_PORT

CLIENT_SECRET = "demo-client-secret"  # noqa: S105 - a throwaway secret of the local demo
STUB_TOKEN = "demo-internal-token"  # noqa: S105
DEMO_ORG = "demo"
DEMO_PROJECT = "checkout-api"
DEMO_FIXTURE = "issue.created"
# The installation the fixtures' webhooks name: the demo's internal integration in the stand-in.
DEMO_INSTALLATION = "7d1f2c3a-9b8e-4f6d-a1c2-3e4f5a6b7c8d"


def seed(env: dict[str, str], transport: httpx.BaseTransport | None = None) -> dict[str, str]:
    """Create the demo tenant unless ``env`` already names one the API still knows; returns
    variables to record. A recorded key the API refuses (401) is what a database made afresh
    (``.local/stack`` deleted, ``.local/stack.env`` kept) leaves: the tenant is seeded again."""
    if env.get("BLAMETRAIL_DEMO_API_KEY") and _known(env, transport):
        return {}
    key = subprocess.run(
        [sys.executable, "-m", "blametrail_common.cli", "apikey", "create", "--org", DEMO_ORG],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=env["BLAMETRAIL_API_URL"], headers=auth, timeout=10) as api:
        conn = _ok(
            api.post(
                "/api/v1/integrations/sentry/connections",
                json={
                    "mode": "internal",
                    "sentry_org_slug": "acme",
                    "api_base_url": f"http://127.0.0.1:{STUB_PORT}",
                    "client_secret": CLIENT_SECRET,
                    "auth_token": STUB_TOKEN,
                },
            )
        )
        svc = _ok(
            api.post("/api/v1/services", json={"name": "Checkout API", "slug": "checkout-api"})
        )
        _ok(
            api.post(
                "/api/v1/integrations/sentry/mappings",
                json={
                    "connection_id": conn["id"],
                    "sentry_project_slug": "checkout-api",
                    "service_id": svc["id"],
                },
            )
        )
        for deploy in _demo_deploys(svc["id"]):
            _ok(api.post("/api/v1/deploys", json=deploy))
    return {
        "BLAMETRAIL_DEMO_API_KEY": key,
        "BLAMETRAIL_DEMO_WEBHOOK_URL": conn["webhook_url"],
        "BLAMETRAIL_DEMO_CLIENT_SECRET": CLIENT_SECRET,
    }


def _known(env: dict[str, str], transport: httpx.BaseTransport | None) -> bool:
    auth = {"Authorization": f"Bearer {env['BLAMETRAIL_DEMO_API_KEY']}"}
    with httpx.Client(
        base_url=env["BLAMETRAIL_API_URL"], headers=auth, timeout=10, transport=transport
    ) as api:
        resp = api.get("/api/v1/integrations/sentry/connections")
    if resp.status_code == 401:
        return False
    _ok(resp)
    return True


# The fixture issue was first seen at 2026-03-14T09:26:53Z, in release checkout-api@2.14.0, with
# in-app frames in checkout/views.py and checkout/pricing.py.
_FIRST_SEEN = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)


def _demo_deploys(service_id: str) -> list[dict[str, Any]]:
    """A small deploy history around the demo incident: the cause, an older one, a later noise."""

    def deploy(version: str, minutes_before: int, paths: list[str]) -> dict[str, Any]:
        finished = _FIRST_SEEN - timedelta(minutes=minutes_before)
        return {
            "service_id": service_id,
            "version": version,
            "environment": "production",
            "started_at": (finished - timedelta(minutes=4)).isoformat(),
            "finished_at": finished.isoformat(),
            "author": "dev@example.com",
            "changed_paths": paths,
        }

    return [
        deploy("checkout-api@2.13.0", 26 * 60, ["checkout/cart.py"]),
        deploy("checkout-api@2.14.0", 7, ["checkout/pricing.py", "checkout/currency.py"]),
        deploy("checkout-api@2.14.0-config", 2, ["deploy/values.yaml"]),
    ]


def push_webhook(env: dict[str, str], timeout_s: float = 60) -> dict[str, Any]:
    """Post the signed ``issue.created`` fixture (re-signed with the demo secret); wait until
    *its* incident is enriched and has ranked suspects, and return it.

    The incident is read by its id, which is deterministic (``incident_id_for`` of the demo
    organization and the fixture's Sentry issue id): the organization's newest incident may be
    another one once the stack has been used (``make up`` run again). The connection and mapping
    were created a moment ago and reach ingest and the normalizer through the outbox and the
    control-plane topics: until ingest knows the connection it answers 404 (retried here); if the
    mapping had not reached the normalizer yet, the webhook was audited as unmapped, and the demo
    does what an operator would do then (``blametrail replay reprocess-ignored``)."""
    from blametrail_common.signature import sign

    body, headers = signed_fixture(DEMO_FIXTURE)
    headers = {**headers, "Sentry-Hook-Signature": sign(body, env["BLAMETRAIL_DEMO_CLIENT_SECRET"])}
    url = env["BLAMETRAIL_DEMO_WEBHOOK_URL"].replace(
        "https://hooks.example", env["BLAMETRAIL_INGEST_URL"]
    )
    register_installation()
    for _ in range(60):
        resp = httpx.post(url, content=body, headers=headers, timeout=10)
        if resp.status_code != 404:
            break
        time.sleep(0.5)  # the connection is not known to ingest yet
    _ok(resp)
    incident_id = demo_incident_id(demo_org_id(), body)
    auth = {"Authorization": f"Bearer {env['BLAMETRAIL_DEMO_API_KEY']}"}
    with httpx.Client(base_url=env["BLAMETRAIL_API_URL"], headers=auth, timeout=10) as api:

        def fetch() -> dict[str, Any] | None:
            resp = api.get(f"/api/v1/incidents/{incident_id}")
            return None if resp.status_code == 404 else dict(_ok(resp))

        def reprocess_ignored() -> None:
            command = ["replay", "reprocess-ignored", "--project", DEMO_PROJECT, "--yes"]
            subprocess.run([sys.executable, "-m", "blametrail_common.cli", *command], check=True)

        return wait_for_incident(incident_id, fetch, reprocess_ignored, timeout_s=timeout_s)


def register_installation(stub_url: str = f"http://127.0.0.1:{STUB_PORT}") -> None:
    """Make the demo's internal integration real to the stand-in, as Sentry would have made it:
    installed in ``acme`` under the uuid its webhooks name, its token the connection's (the
    stand-in keeps no state across restarts, so every run does it)."""
    _ok(
        httpx.post(
            f"{stub_url}/_stub/installations",
            json={"org": "acme", "uuid": DEMO_INSTALLATION, "token": STUB_TOKEN},
            timeout=10,
        )
    )


def show_links(
    env: dict[str, str], incident: dict[str, Any], stub_url: str = f"http://127.0.0.1:{STUB_PORT}"
) -> list[str]:
    """Both directions of the demo incident's link, as lines to print: the external issue the
    enricher made on the Sentry issue (as the stand-in holds it), and Sentry's issue-link call
    (what its "Link BlameTrail incident" button sends, signed) answered with the incident."""
    issue_id = json.loads(signed_fixture(DEMO_FIXTURE)[0])["data"]["issue"]["id"]
    made = [
        e
        for e in _ok(httpx.get(f"{stub_url}/_stub/external-issues", timeout=10))
        if e["issueId"] == str(issue_id)
    ]
    recorded = [lk for lk in incident.get("sentry_links") or [] if lk.get("external_issue_id")]
    if made:
        lines = [
            f"BlameTrail -> Sentry: issue {issue_id} shows {made[-1]['displayName']} -> {made[-1]['webUrl']}"
        ]
    elif recorded:
        lines = [
            f"BlameTrail -> Sentry: linked earlier (external issue {recorded[-1]['external_issue_id']})"
        ]
    else:
        lines = [f"BlameTrail -> Sentry: no link on issue {issue_id} (see the enricher's log)"]
    from blametrail_common.signature import sign

    doc = {
        "fields": {"incident": incident["incident_id"]},
        "installationId": DEMO_INSTALLATION,
        "issueId": int(issue_id),
        "webUrl": f"https://acme.sentry.io/issues/{issue_id}/",
        "project": {"slug": DEMO_PROJECT, "id": 4505123456789012},
        "actor": {"type": "user", "id": 1, "name": "Demo User"},
    }
    body = json.dumps(doc).encode()
    answer = _ok(
        httpx.post(
            f"{env['BLAMETRAIL_API_URL']}/sentry/issue-link/link",
            content=body,
            headers={
                "Content-Type": "application/json",
                "Sentry-App-Signature": sign(body, env["BLAMETRAIL_DEMO_CLIENT_SECRET"]),
            },
            timeout=10,
        )
    )
    lines.append(
        f"Sentry -> BlameTrail: issue-link answered {answer['project']}#{answer['identifier']}"
        f" -> {answer['webUrl']}"
    )
    return lines


def demo_org_id() -> str:
    """The id of the demo organization (the tenant id of its incidents), from Postgres."""
    import psycopg
    from blametrail_common.settings import PostgresSettings

    with psycopg.connect(PostgresSettings().database_url, connect_timeout=10) as conn:
        row = conn.execute("SELECT id FROM organizations WHERE slug = %s", (DEMO_ORG,)).fetchone()
    if row is None:
        raise RuntimeError(f"no organization {DEMO_ORG!r}: was the demo seeded in this database?")
    return str(row[0])


def demo_incident_id(org_id: str, body: bytes) -> str:
    """The incident the normalizer makes of the fixture ``body`` for tenant ``org_id``."""
    issue = json.loads(body)["data"]["issue"]
    return incident_id_for(org_id, "issue", str(issue["id"]))


def missing_parts(incident: dict[str, Any] | None) -> list[str]:
    """What the demo still waits for in ``incident`` (None: not in the read model yet)."""
    if incident is None:
        return ["the incident itself (not in the read model yet)"]
    missing = []
    if not incident.get("enrichment"):
        missing.append("its enrichment")
    if not (incident.get("suspects") or {}).get("ranked"):
        missing.append("a ranked suspect deploy")
    return missing


def wait_for_incident(
    incident_id: str,
    fetch: Callable[[], dict[str, Any] | None],
    reprocess_ignored: Callable[[], None],
    *,
    timeout_s: float = 60,
    reprocess_after_s: float = 10,
    poll_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll ``fetch`` (the incident, or None while it does not exist) until nothing is missing;
    after ``reprocess_after_s`` without the incident call ``reprocess_ignored`` once. Past
    ``timeout_s`` raise ``DemoTimeout`` naming what never came."""
    started = clock()
    reprocessed = False
    while True:
        incident = fetch()
        missing = missing_parts(incident)
        if not missing:
            assert incident is not None
            return incident
        waited = clock() - started
        if waited >= timeout_s:
            raise DemoTimeout(
                f"demo incident {incident_id}: after {timeout_s:.0f} s still waiting for"
                f" {' and '.join(missing)}; see .local/run/*.log"
            )
        if incident is None and not reprocessed and waited >= reprocess_after_s:
            reprocessed = True
            reprocess_ignored()
        sleep(poll_s)


class DemoTimeout(RuntimeError):
    """The demo incident did not become complete within its deadline."""


def describe(incident: dict[str, Any]) -> list[str]:
    """The lines ``blametrail-devstack demo`` prints about the demo incident."""
    enrichment = incident.get("enrichment") or {}
    lines = [
        f"demo incident {incident['incident_id']}: {incident['title']!r} on"
        f" {incident['service_id']}, status {incident['status']},"
        f" enrichment {enrichment.get('status', 'none')}"
    ]
    ranked = (incident.get("suspects") or {}).get("ranked") or []
    if ranked:
        top = ranked[0]
        lines.append(f"top suspect: {top['version']} (score {top['score']:.2f}): {top['explain']}")
    else:
        lines.append("top suspect: none ranked")
    return lines


def connect_public_app(env: dict[str, str], timeout_s: float = 30) -> dict[str, Any]:
    """Connect Sentry organization ``globex`` to the demo tenant through the public (OAuth) app,
    as a person's browser would: the connect link, the stand-in's install page (which also sends
    ``installation.created`` through ingest), the callback. Once: a second run finds it."""
    auth = {"Authorization": f"Bearer {env['BLAMETRAIL_DEMO_API_KEY']}"}
    with httpx.Client(base_url=env["BLAMETRAIL_API_URL"], headers=auth, timeout=10) as api:

        def oauth_connections() -> list[dict[str, Any]]:
            items = _ok(api.get("/api/v1/integrations/sentry/connections"))["items"]
            return [c for c in items if c["mode"] == "oauth"]

        if not oauth_connections():
            link = _ok(api.post("/api/v1/integrations/sentry/connect"))
            with httpx.Client(follow_redirects=True, timeout=timeout_s) as browser:
                page = browser.get(link["url"])  # -> install page -> callback: "Connect?"
                form = dict(re.findall(r'name="(\w+)" value="([^"]*)"', page.text))
                if page.status_code == 200 and form:  # press Connect
                    page = browser.post(
                        page.url.join("/integrations/sentry/oauth/confirm"), data=form
                    )
            if page.status_code != 200:
                raise RuntimeError(f"OAuth connect failed: {page.status_code} {page.text}")
        (connection,) = oauth_connections()
        return dict(connection)


DEMO_ADMIN = "admin@demo.example"


def ensure_admin(env: dict[str, str], path: Path) -> str:
    """The demo organization's admin, to sign in to the web with: created once with a random
    password, written (mode 0600) to ``path``; the file's text (email and password lines).
    Without the file the password cannot be shown again: say so rather than reset it."""
    if path.is_file():
        return path.read_text()
    auth = {"Authorization": f"Bearer {env['BLAMETRAIL_DEMO_API_KEY']}"}
    password = secrets.token_urlsafe(12)
    with httpx.Client(base_url=env["BLAMETRAIL_API_URL"], headers=auth, timeout=10) as api:
        made = api.post(
            "/api/v1/users",
            json={"email": DEMO_ADMIN, "name": "Demo Admin", "password": password, "role": "admin"},
        )
    if made.status_code == 409:
        return f"{DEMO_ADMIN} exists but {path} is gone: `make clean` and `make up` start afresh\n"
    _ok(made)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    text = f"email:    {DEMO_ADMIN}\npassword: {password}\n"
    path.write_text(text)
    return text


def _ok(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        raise RuntimeError(
            f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text}"
        )
    return resp.json()
