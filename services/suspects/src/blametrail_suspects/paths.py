"""Pure: matching stack-frame filenames against a deploy's changed paths. No IO.

Frames and changed paths name the same file from different roots: Sentry reports
``app/checkout/views.py`` or ``/srv/app/checkout/views.py`` (or ``webpack:///./src/cart.ts``), the
deploy lists repo-relative paths such as ``services/checkout-api/app/checkout/views.py``. Neither
is always a suffix of the other, so two paths match when, split into components, they end with
the same :data:`MIN_SUFFIX` components (``checkout/views.py`` here), or are identical. A bare
``views.py`` on one side only matches a bare ``views.py`` on the other: one component is too
ambiguous to blame a deploy for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["MIN_SUFFIX", "PathKey", "components", "path_key", "path_keys"]

MIN_SUFFIX = 2
"""Components two paths must share at their end to match (unless identical)."""

PathKey = tuple[str, ...]
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/+")
_NOISE = frozenset({"", ".", "~"})


def components(path: str) -> PathKey:
    """``path`` as components: scheme, query, ``./`` and backslashes dropped; ``..`` kept as is."""
    path = _SCHEME.sub("", path.strip()).split("?", 1)[0].split("#", 1)[0]
    return tuple(p for p in path.replace("\\", "/").split("/") if p not in _NOISE)


def path_key(path: str) -> PathKey:
    """The matching key: the last :data:`MIN_SUFFIX` components (two paths share a common
    suffix that long, or are identical, exactly when their keys are equal)."""
    return components(path)[-MIN_SUFFIX:]


def path_keys(paths: Iterable[str]) -> frozenset[PathKey]:
    """The lookup set for a deploy's changed paths (empty paths dropped)."""
    return frozenset(key for key in map(path_key, paths) if key)
