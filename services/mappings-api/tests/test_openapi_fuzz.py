"""Schemathesis over ``/openapi.json``: requests generated from the document (valid and invalid
ones) against the API served by uvicorn on the shared Postgres (a database of its own: it fills
the tables with whatever it generates). Every answer must be one the document declares for that
operation, with the declared content type and body model, and never a 5xx. Bounded: a few
examples per operation, no shrinking, no coverage phase (a few seconds in all).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.db import migrate
from blametrail_devstack.pytest_plugin import Infra, create_database
from blametrail_devstack.stack import free_port
from blametrail_mappings_api.app import create_app
from blametrail_mappings_api.repository import Repository, create_pool
from blametrail_mappings_api.sentry.client import SentryApp
from blametrail_mappings_api.sentry.oauth import OAuth
from blametrail_mappings_api.settings import ApiSettings, OAuthSettings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.applications import Starlette

CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": 16,  # the same cases every run: a failure here is a change, not a new draw
        "generation": {
            "max-examples": 8,
            "no-shrink": True,
            "deterministic": True,
            # NUL in a text field or a parameter: a 422 (Postgres cannot store it)
            "allow-x00": True,
            # Query parameters the document does not name are ignored (as by most APIs), not
            # refused; the key is ours to send (below), not a generated header.
            "allow-extra-parameters": False,
            "with-security-parameters": False,
        },
        "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
    }
)
# The document only: the app is built without a database to read its OpenAPI.
DOC = create_app(
    ApiSettings(), Repository(create_pool("postgresql://unused"), SecretBox(generate_key())), {}
).openapi()
schema = schemathesis.openapi.from_dict(DOC, config=CONFIG)

# What the document promises. Not checked: that schema-valid data is accepted (a mapping of a
# connection the organization does not have is valid JSON and a 422) and what an undocumented
# method answers (405 without an Allow header, as before).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]


@dataclass
class Served:
    base_url: str
    auth: dict[str, str]


@pytest.fixture(scope="module")
def served(infra: Infra) -> Iterator[Served]:
    dsn = create_database(infra.server_dsn, f"bt_fuzz_{uuid.uuid4().hex[:8]}")
    migrate(dsn)
    box, port = SecretBox(generate_key()), free_port()
    key = asyncio.run(_api_key(dsn, box))
    holder: dict[str, uvicorn.Server] = {}

    def run() -> None:
        asyncio.run(_serve(dsn, box, port, holder))

    thread = threading.Thread(target=run, name="api-under-fuzz", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not (holder.get("server") and holder["server"].started):
        assert thread.is_alive(), "the API under fuzz ended before it served"
        assert time.monotonic() < deadline, "the API under fuzz did not start within 20 s"
        time.sleep(0.05)
    yield Served(f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"})
    holder["server"].should_exit = True
    thread.join(15)


async def _api_key(dsn: str, box: SecretBox) -> str:
    pool = create_pool(dsn, 1)
    await pool.open()
    try:
        return await Repository(pool, box).create_api_key(f"fuzz-{uuid.uuid4().hex[:8]}")
    finally:
        await pool.close()


async def _serve(dsn: str, box: SecretBox, port: int, holder: dict[str, uvicorn.Server]) -> None:
    pool, http = create_pool(dsn, 4), httpx.AsyncClient()

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await pool.open()
        try:
            yield
        finally:
            await pool.close()
            await http.aclose()

    # OAuth on, so a connect link is a 201 (making one calls nobody; Sentry is never reached).
    sentry = SentryApp(http, "https://sentry.invalid", "fuzz-app", "fuzz-secret")
    oauth = OAuth(pool, box, sentry, OAuthSettings(client_id="fuzz-app"))
    settings = ApiSettings(public_ingest_url="https://hooks.example")
    app = create_app(settings, Repository(pool, box), {}, lifespan, oauth)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    holder["server"] = server
    await server.serve()


@schema.parametrize()
def test_every_answer_is_one_the_document_declares(case: Any, served: Served) -> None:
    case.call_and_validate(base_url=served.base_url, headers=served.auth, checks=CHECKS, timeout=10)
