"""The enricher's HTTP session for Sentry's API (composition, shared with bench/enrich)."""

from __future__ import annotations

import aiohttp
from blametrail_common.sentry_api import aiohttp_session

from blametrail_enricher.settings import EnricherSettings

__all__ = ["sentry_client"]


def sentry_client(settings: EnricherSettings) -> aiohttp.ClientSession:
    """At most ``settings.http_connections`` connections to Sentry, every one kept alive: a
    storm needs no more than Sentry lets its budgets have in flight (25 per endpoint, three
    endpoints), and calls past them wait for a free one. Make it in the running loop."""
    return aiohttp_session(settings.http_connections)
