"""``python -m blametrail_sentry_stub``: the stand-in on ``BLAMETRAIL_SENTRY_STUB_PORT`` (8090).

Seeds an internal-integration token for org ``acme`` from ``BLAMETRAIL_SENTRY_STUB_TOKEN``
(default ``demo-internal-token``) for the demo. With ``BLAMETRAIL_SENTRY_CLIENT_ID`` set it also
plays the public app (the variables the mappings-api reads): its install page
``/sentry-apps/{slug}/external-install/?organization=`` installs it, sends the signed
``installation.created`` to ``$BLAMETRAIL_PUBLIC_INGEST_URL/webhooks/sentry`` and redirects to
``$BLAMETRAIL_PUBLIC_INGEST_URL/integrations/sentry/oauth/callback``.

Its rate limiter (per organization and endpoint, as Sentry's): ``BLAMETRAIL_SENTRY_STUB_RATE_LIMIT``
requests a second (1000), ``BLAMETRAIL_SENTRY_STUB_CONCURRENT_LIMIT`` at once (25), and
``BLAMETRAIL_SENTRY_STUB_LATENCY_MS`` added to every answer (0); ``/_stub/budget`` changes them
while it runs.
"""

from __future__ import annotations

import os

import uvicorn

from blametrail_sentry_stub.app import create_app
from blametrail_sentry_stub.state import PublicApp, StubState


def main() -> None:
    state = StubState(
        rate_limit=int(os.environ.get("BLAMETRAIL_SENTRY_STUB_RATE_LIMIT", "1000")),
        concurrent_limit=int(os.environ.get("BLAMETRAIL_SENTRY_STUB_CONCURRENT_LIMIT", "25")),
        latency_s=float(os.environ.get("BLAMETRAIL_SENTRY_STUB_LATENCY_MS", "0")) / 1000,
    )
    state.add_internal_token(
        "acme", os.environ.get("BLAMETRAIL_SENTRY_STUB_TOKEN", "demo-internal-token")
    )
    client_id = os.environ.get("BLAMETRAIL_SENTRY_CLIENT_ID", "")
    secrets = os.environ.get("BLAMETRAIL_INGEST_PUBLIC_CLIENT_SECRETS", "").split(",")
    public = os.environ.get("BLAMETRAIL_PUBLIC_INGEST_URL", "http://127.0.0.1:8080").rstrip("/")
    if client_id and secrets[0].strip():
        state.public_app = PublicApp(
            slug=os.environ.get("BLAMETRAIL_SENTRY_APP_SLUG", "blametrail"),
            client_id=client_id,
            client_secret=secrets[0].strip(),
            webhook_url=f"{public}/webhooks/sentry",
            redirect_url=f"{public}/integrations/sentry/oauth/callback",
        )
    port = int(os.environ.get("BLAMETRAIL_SENTRY_STUB_PORT", "8090"))
    uvicorn.run(create_app(state), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
