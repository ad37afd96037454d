from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_devstack.web_testing import Clock, Env
from blametrail_mappings_api.app import create_app as create_api
from blametrail_mappings_api.repository import Pool, Repository, create_pool
from blametrail_mappings_api.settings import ApiSettings
from blametrail_web.app import create_app
from blametrail_web.settings import WebSettings


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    p = create_pool(database_url, 4)
    await p.open()
    yield p
    await p.close()


@pytest.fixture
async def env(pool: Pool, database_url: str) -> AsyncIterator[Env]:
    clock = Clock()
    repo = Repository(pool, SecretBox(generate_key()))
    api_app = create_api(
        ApiSettings(public_ingest_url="https://hooks.example"), repo, {}, clock=clock
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api_app, client=("127.0.0.1", 4000)),
        base_url="http://api",
    ) as http:
        web_app = create_app(WebSettings(cookie_secure=False), b"k" * 32, http)
        yield Env(repo, api_app, web_app, clock, database_url)
