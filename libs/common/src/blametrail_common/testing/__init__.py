"""Test support shared by every package's tests: the Sentry fixtures, located inside the repo.

``sentry_fixtures/`` is a verbatim copy of ``shared/sentry/fixtures`` (hand-built for this project,
see its README): webhook bodies, wire-exact signed vectors, API responses, UI-component bodies.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["FIXTURES", "TEST_SECRET", "fixture_bytes", "signed_fixture"]

FIXTURES = Path(__file__).parent / "sentry_fixtures"
TEST_SECRET = (FIXTURES / "signed" / "TEST_SECRET.txt").read_text().strip()


def fixture_bytes(relative: str) -> bytes:
    """The bytes of ``sentry_fixtures/<relative>``, e.g. ``"webhooks/issue.created.json"``."""
    return (FIXTURES / relative).read_bytes()


def signed_fixture(name: str) -> tuple[bytes, dict[str, str]]:
    """A wire-exact signed webhook: ``(body bytes, headers)`` for e.g. ``"issue.created"``."""
    import orjson

    body = (FIXTURES / "signed" / f"{name}.body").read_bytes()
    headers = orjson.loads((FIXTURES / "signed" / f"{name}.headers.json").read_bytes())
    return body, {str(k): str(v) for k, v in headers.items()}
