"""What bounds the work an unauthenticated UI-component call can cause (issue 17 M3), pure:

- :class:`SecretCache`: decrypted client secrets by connection and ciphertexts (a rotation
  stores new ciphertexts, so a rotated connection is a new entry; an old one ages out), at most
  ``size`` connections, least recently used out first;
- :class:`AddressWindow`: calls per client address per window (fixed windows, at most
  ``addresses`` addresses remembered; when full, ended windows are dropped first, then the
  oldest), for the calls that name an installation no connection is bound to.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

__all__ = ["AddressWindow", "SecretCache"]


class SecretCache:
    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, tuple[str, ...]], list[str]] = OrderedDict()

    def get(
        self, connection_id: str, ciphertexts: Sequence[str], decrypt: Callable[[str], str | None]
    ) -> list[str]:
        """The plaintexts of ``ciphertexts`` (``decrypt`` returns ``None`` for one it cannot
        read: left out), decrypted once per connection and ciphertexts."""
        key = (connection_id, tuple(ciphertexts))
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            return found
        plain = [p for p in (decrypt(c) for c in ciphertexts) if p is not None]
        self._entries[key] = plain
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return plain

    def __len__(self) -> int:
        return len(self._entries)


class AddressWindow:
    def __init__(
        self,
        limit: int,
        window_s: float = 60.0,
        addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window_s, self.addresses, self.clock = limit, window_s, addresses, clock
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def take(self, address: str) -> float | None:
        """Count a call from ``address``: ``None`` if allowed, else the seconds until its window
        ends (the call is not counted). ``limit`` 0 allows every call."""
        if self.limit <= 0:
            return None
        now = self.clock()
        start, count = self._seen.get(address, (now, 0))
        if now - start >= self.window_s:
            start, count = now, 0
        if count >= self.limit:
            return max(start + self.window_s - now, 0.0)
        self._seen[address] = (start, count + 1)
        self._seen.move_to_end(address)
        if len(self._seen) > self.addresses:
            self._forget(now)
        return None

    def _forget(self, now: float) -> None:
        for address, (start, _) in list(self._seen.items()):
            if now - start >= self.window_s:
                del self._seen[address]
        while len(self._seen) > self.addresses:
            self._seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)
