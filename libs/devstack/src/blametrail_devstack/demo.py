"""Seeds a demo tenant on a running stack and pushes one signed webhook through it.

Creates (once; recorded in ``.local/stack.env``) an organization ``demo`` with an API key, a
service, an internal connection to the local Sentry stand-in, and a mapping of the fixtures'
project ``checkout-api``; then posts the signed ``issue.created`` fixture to ingest and waits
until the incident, enriched, is visible in the API.
"""

from __future__ import annotations

import subprocess
import sys
import time
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
    return {
        "BLAMETRAIL_DEMO_API_KEY": key,
        "BLAMETRAIL_DEMO_WEBHOOK_URL": conn["webhook_url"],
        "BLAMETRAIL_DEMO_CLIENT_SECRET": CLIENT_SECRET,
    }


def push_webhook(env: dict[str, str], timeout_s: float = 60) -> dict[str, Any]:
    """Post the signed ``issue.created`` fixture (re-signed with the demo secret); wait for the incident."""
    from blametrail_ingest.signature import sign

    body, headers = signed_fixture("issue.created")
    headers = {**headers, "Sentry-Hook-Signature": sign(body, env["BLAMETRAIL_DEMO_CLIENT_SECRET"])}
    _ok(
        httpx.post(
            env["BLAMETRAIL_DEMO_WEBHOOK_URL"].replace(
                "https://hooks.example", env["BLAMETRAIL_INGEST_URL"]
            ),
            content=body,
            headers=headers,
            timeout=10,
        )
    )
    auth = {"Authorization": f"Bearer {env['BLAMETRAIL_DEMO_API_KEY']}"}
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=env["BLAMETRAIL_API_URL"], headers=auth, timeout=10) as api:
        while time.monotonic() < deadline:
            items = _ok(api.get("/api/v1/incidents"))["items"]
            if items:
                incident = _ok(api.get(f"/api/v1/incidents/{items[0]['incident_id']}"))
                if incident.get("enrichment"):
                    return dict(incident)
            time.sleep(0.5)
    raise RuntimeError("the demo incident did not appear in time; see .local/run/*.log")


def _ok(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        raise RuntimeError(
            f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text}"
        )
    return resp.json()
