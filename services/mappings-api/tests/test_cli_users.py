"""``blametrail users create|list|disable`` as a person runs them (a subprocess on the session's
database), and the demo admin's seeding."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import httpx
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_mappings_api.app import create_app
from blametrail_mappings_api.repository import Repository, create_pool
from blametrail_mappings_api.settings import ApiSettings


def _cli(database_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blametrail_common.cli", "users", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "DATABASE_URL": database_url},
        timeout=60,
        check=False,
    )


async def _signs_in(database_url: str, email: str, password: str) -> int:
    pool = create_pool(database_url, 2)
    await pool.open()
    try:
        app = create_app(ApiSettings(), Repository(pool, SecretBox(generate_key())), {})
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api"
        ) as client:
            answer = await client.post(
                "/api/v1/sessions", json={"email": email, "password": password}
            )
            return answer.status_code
    finally:
        await pool.close()


async def test_users_create_list_disable(database_url: str) -> None:
    org, email = f"cli-{uuid.uuid4().hex[:6]}", f"{uuid.uuid4().hex[:8]}@example.test"
    password = "a long enough password"
    args = ["create", "--org", org, "--email", email, "--name", "Ops", "--role", "member"]
    made = _cli(database_url, *args, "--password-stdin", stdin=password + "\n")
    assert made.returncode == 0, made.stderr
    assert await _signs_in(database_url, email, password) == 201
    again = _cli(database_url, *args, "--password-stdin", stdin=password + "\n")
    assert again.returncode == 1
    assert "this email cannot be used" in again.stderr  # says nothing of who holds it
    short = _cli(database_url, *args, "--password-stdin", stdin="short\n")
    assert (short.returncode, "at least 12" in short.stderr) == (2, True)
    listed = _cli(database_url, "list", "--org", org)
    assert email in listed.stdout
    assert "1 users" in listed.stdout
    assert _cli(database_url, "list", "--org", "no-such-org").returncode == 1
    # the only user is a member, so disabling is allowed (the last-admin rule is about admins)
    disabled = _cli(database_url, "disable", "--email", email.upper())
    assert disabled.returncode == 0, disabled.stderr
    assert await _signs_in(database_url, email, password) == 401
    assert _cli(database_url, "disable", "--email", "nobody@example.test").returncode == 1
