"""Which installations' links to Sentry are known broken. No I/O; time is passed in.

A link Sentry refused for good (404: it does not know the installation, or the issue is not in
the installation's organization; 403: no ``event:write``; 401: the token was revoked; 400) would
be refused for every incident of that installation alike, so it is remembered per (connection,
installation): reported once per cause (:meth:`BrokenLinks.broke` says when it is news), and no
incident of that installation tries again until the installation or the connection's token
changes, or ``retry_after_s`` passed (then the next incident tries once; failing again with the
same cause is not news). A link made heals it, and proves the installation: until one was made
there, the enricher tries one link at a time per installation (:meth:`BrokenLinks.proven`), so
a batch of incidents of a broken installation makes one call, not one per incident. Only refusals are remembered: when Sentry did not
answer (retries exhausted) the next incident tries as before. Process memory: after a restart
the first incident of a broken installation tries once more.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from blametrail_common.sentry_api import GaveUp, NotFound, SentryApiError, TokenRejected

__all__ = ["Broken", "BrokenLinks", "link_cause"]


def link_cause(exc: SentryApiError) -> str:
    """Pure: the cause label of a failed link (``unanswered`` is the only transient one)."""
    if isinstance(exc, GaveUp):
        return "unanswered"
    if isinstance(exc, NotFound):
        return "not_found"
    if isinstance(exc, TokenRejected):
        return "token_rejected"
    return "forbidden" if ": 403 " in f"{exc} " else "refused"


@dataclass(frozen=True, slots=True)
class Broken:
    cause: str
    reason: str
    token: str  # fingerprint of the token that was refused: a new token is worth a try
    since: float
    until: float


class BrokenLinks:
    """(connection, installation) -> why links there are refused, bounded (oldest forgotten)."""

    def __init__(self, retry_after_s: float = 6 * 3600.0, limit: int = 10_000) -> None:
        self.retry_after_s, self.limit = retry_after_s, limit
        self._broken: OrderedDict[tuple[str, str], Broken] = OrderedDict()
        self._reported: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._proven: OrderedDict[tuple[str, str], None] = OrderedDict()

    def proven(self, connection: str, installation: str) -> bool:
        """A link was made there (and none refused since)."""
        return (connection, installation) in self._proven

    def blocked(self, connection: str, installation: str, token: str, now: float) -> Broken | None:
        """Why a link there is not tried now; ``None``: try it."""
        key = (connection, installation)
        found = self._broken.get(key)
        if found is None:
            return None
        if found.token != token or now >= found.until:
            del self._broken[key]
            return None
        return found

    def broke(
        self, connection: str, installation: str, token: str, cause: str, reason: str, now: float
    ) -> bool:
        """Remember a refusal; ``True`` if it is news (not the cause last reported there)."""
        key = (connection, installation)
        self._broken[key] = Broken(cause, reason, token, now, now + self.retry_after_s)
        self._broken.move_to_end(key)
        self._proven.pop(key, None)
        news = self._reported.get(key) != cause
        self._reported[key] = cause
        self._reported.move_to_end(key)
        for table in (self._broken, self._reported, self._proven):
            while len(table) > self.limit:
                table.popitem(last=False)
        return news

    def healed(self, connection: str, installation: str) -> bool:
        """A link was made there; ``True`` if it had been reported broken."""
        key = (connection, installation)
        self._broken.pop(key, None)
        self._proven[key] = None
        self._proven.move_to_end(key)
        while len(self._proven) > self.limit:
            self._proven.popitem(last=False)
        return self._reported.pop(key, None) is not None

    def __len__(self) -> int:
        return len(self._broken)
