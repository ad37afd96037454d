"""A connection's credentials: its token decrypted once per ciphertext, never a stale one."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.events import ConnectionStateV1
from blametrail_common.sentry_credentials import ConnectionCredentials


class _Box(SecretBox):
    decrypted = 0

    def decrypt(self, token: str) -> str:
        self.decrypted += 1
        return super().decrypt(token)


def _state(box: SecretBox, token: str | None, *, enabled: bool = True) -> ConnectionStateV1:
    return ConnectionStateV1(
        connection_id="c1",
        tenant_id="t1",
        mode="internal",
        enabled=enabled,
        sentry_org_slug="acme",
        api_base_url="https://sentry.example",
        client_secrets_enc=[],
        auth_token_enc=None if token is None else box.encrypt(token),
        updated_at=datetime(2026, 12, 2, tzinfo=UTC),
    )


def test_a_token_is_decrypted_once_until_it_changes() -> None:
    box = _Box(generate_key())
    table: dict[str, ConnectionStateV1] = {"c1": _state(box, "token-1")}
    creds = ConnectionCredentials(table, box)  # type: ignore[arg-type]  # a table is its .get
    for _ in range(3):
        known = creds.credentials("c1")
        assert known is not None
        assert known.token == "token-1"
    assert box.decrypted == 1
    table["c1"] = _state(box, "token-2")  # a new token: a new ciphertext
    found: Any = creds.credentials("c1")
    assert found.token == "token-2"
    assert box.decrypted == 2
    table["c1"] = _state(box, "token-2", enabled=False)
    assert creds.credentials("c1") is None
    table["c1"] = _state(box, None)
    assert creds.credentials("c1") is None
    assert creds.credentials("unknown") is None
    table["c1"] = _state(box, "token-3").model_copy(update={"auth_token_enc": "not a cipher"})
    before = box.decrypted
    assert creds.credentials("c1") is None  # undecryptable: no credentials, nothing remembered
    assert creds.credentials("c1") is None
    assert box.decrypted == before + 2
