"""Seeds a demo tenant on a running stack and pushes one signed webhook through it.

Creates (once; recorded in ``.local/stack.env``) an organization ``demo`` with an API key, a
service, an internal connection to the local Sentry stand-in, and a mapping of the fixtures'
project ``checkout-api``; then posts the signed ``issue.created`` fixture to ingest and waits
until the incident, enriched, is visible in the API.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from blametrail_common.testing import signed_fixture

from blametrail_devstack.services import STUB_PORT

CLIENT_SECRET = "demo-client-secret"  # noqa: S105 - a throwaway secret of the local demo
STUB_TOKEN = "demo-internal-token"  # noqa: S105


def seed(env: dict[str, str]) -> dict[str, str]:
    """Create the demo tenant unless ``env`` already names one; returns variables to record."""
    if env.get("BLAMETRAIL_DEMO_API_KEY"):
        return {}
    key = subprocess.run(
        [sys.executable, "-m", "blametrail_common.cli", "apikey", "create", "--org", "demo"],
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
    """Post the signed ``issue.created`` fixture (re-signed with the demo secret); wait for the incident.

    The connection and mapping were created a moment ago and reach ingest and the normalizer
    through the outbox and the control-plane topics: until ingest knows the connection it answers
    404 (retried here); if the mapping had not reached the normalizer yet, the webhook was
    audited as unmapped, and the demo does what an operator would do then
    (``blametrail replay reprocess-ignored``)."""
    from blametrail_common.signature import sign

    body, headers = signed_fixture("issue.created")
    headers = {**headers, "Sentry-Hook-Signature": sign(body, env["BLAMETRAIL_DEMO_CLIENT_SECRET"])}
    url = env["BLAMETRAIL_DEMO_WEBHOOK_URL"].replace(
        "https://hooks.example", env["BLAMETRAIL_INGEST_URL"]
    )
    for _ in range(60):
        resp = httpx.post(url, content=body, headers=headers, timeout=10)
        if resp.status_code != 404:
            break
        time.sleep(0.5)  # the connection is not known to ingest yet
    _ok(resp)
    auth = {"Authorization": f"Bearer {env['BLAMETRAIL_DEMO_API_KEY']}"}
    started = time.monotonic()
    deadline, reprocessed = started + timeout_s, False
    with httpx.Client(base_url=env["BLAMETRAIL_API_URL"], headers=auth, timeout=10) as api:
        while time.monotonic() < deadline:
            items = _ok(api.get("/api/v1/incidents"))["items"]
            if not items and not reprocessed and time.monotonic() - started > 10:
                reprocessed = True
                command = ["replay", "reprocess-ignored", "--project", "checkout-api", "--yes"]
                subprocess.run(
                    [sys.executable, "-m", "blametrail_common.cli", *command], check=True
                )
            if items:
                incident = _ok(api.get(f"/api/v1/incidents/{items[0]['incident_id']}"))
                if incident.get("enrichment") and incident.get("suspects"):
                    return dict(incident)
            time.sleep(0.5)
    raise RuntimeError("the demo incident did not appear in time; see .local/run/*.log")


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


def _ok(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        raise RuntimeError(
            f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text}"
        )
    return resp.json()
