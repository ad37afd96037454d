"""A local stand-in for the Sentry web API, for tests and the demo only (no internet here).

It speaks the documented endpoints BlameTrail calls (latest event, issue tags, the
installation token exchange and refresh, installation verification, external issues) from the
project's fixtures, checks Bearer tokens, enforces a rate limit with Sentry's headers, and can
inject faults per route: 429 (no ``Retry-After``, as Sentry), 5xx, slow answers, dropped
connections and 401s. Control endpoints live under ``/_stub/``.
"""

from blametrail_sentry_stub.app import create_app
from blametrail_sentry_stub.server import serve
from blametrail_sentry_stub.state import Fault, StubState

__all__ = ["Fault", "StubState", "create_app", "serve"]
