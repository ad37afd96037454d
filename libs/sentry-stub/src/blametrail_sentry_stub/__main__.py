"""``python -m blametrail_sentry_stub``: the stand-in on ``BLAMETRAIL_SENTRY_STUB_PORT`` (8090).

Seeds an internal-integration token for org ``acme`` from ``BLAMETRAIL_SENTRY_STUB_TOKEN``
(default ``demo-internal-token``) for the demo.
"""

from __future__ import annotations

import os

import uvicorn

from blametrail_sentry_stub.app import create_app
from blametrail_sentry_stub.state import StubState


def main() -> None:
    state = StubState()
    state.add_internal_token(
        "acme", os.environ.get("BLAMETRAIL_SENTRY_STUB_TOKEN", "demo-internal-token")
    )
    port = int(os.environ.get("BLAMETRAIL_SENTRY_STUB_PORT", "8090"))
    uvicorn.run(create_app(state), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
