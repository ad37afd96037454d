"""A local stand-in for the Sentry web API, for tests and the demo only (no internet here).

It speaks the documented endpoints BlameTrail calls (latest event, issue tags, the
installation token exchange and refresh, installation verification, external issues) from the
project's fixtures, checks Bearer tokens, enforces Sentry's two rate limits (requests per fixed
window and requests in progress, each per organization and endpoint, with Sentry's
``X-Sentry-Rate-Limit-*`` headers on every answer and a 429 naming the limit), and can
inject faults per route: 429 (no ``Retry-After``, as Sentry), 5xx, slow answers, dropped
connections, 401s and ``"huge"`` answers (a 200 of ``size_bytes``). Control endpoints live under ``/_stub/``.

Two kinds of faults:

* **Queued faults** hit the next ``count`` requests of a route (``"*"``: any), then are gone:
  ``state.faults.append(Fault("latest_event", "503", count=2))`` in a test, or
  ``POST /_stub/faults {"route": "tags", "kind": "slow", "count": 1, "delay_s": 2}``.
* **Storms** (outages) hit *every* request of a route for a duration, then stop by themselves:
  ``state.storm("503", duration_s=30)`` / ``state.calm()`` in a test, or over HTTP
  ``POST /_stub/storm {"kind": "503", "duration_s": 30, "route": "*"}`` (answers ``until``,
  epoch seconds of the stub clock) and ``DELETE /_stub/storm`` (ends every storm now). Kinds
  are those of :data:`~blametrail_sentry_stub.state.FaultKind`: ``"500"``/``"502"``/``"503"``
  for a 5xx storm, ``"429"`` for a rate-limit storm (no ``Retry-After``,
  ``X-Sentry-Rate-Limit-Remaining: 0`` and ``-Reset`` at the next second, as Sentry),
  ``"reset"``/``"slow"`` (with ``delay_s``) for a network that drops or crawls. A storm is
  checked before queued faults; storms never count down.

``GET /_stub/requests`` lists every request seen (route, method, path), to count calls;
``GET /_stub/budget`` the rate limiter's settings and its 429s by reason (``POST`` changes them).
"""

from blametrail_sentry_stub.app import create_app
from blametrail_sentry_stub.server import serve
from blametrail_sentry_stub.state import Fault, Storm, StubState

__all__ = ["Fault", "Storm", "StubState", "create_app", "serve"]
