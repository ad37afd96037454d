"""Sign-in cost and the cost of checking a session against an API key (not a test).

On a database of its own (made on the server of ``DATABASE_URL``, migrated, dropped after):
- sign-in latency (``POST /api/v1/sessions``: argon2id verify + session insert), beside the
  argon2id verify alone measured in the same run;
- ``GET /api/v1/me`` with a session token and with an API key (same app, same run): medians,
  p95s and the ratio session/key;
- memory of a burst: peak RSS of a fresh process while 8 sign-ins' password checks run
  at once, as before issue 17 H2 (argon2-cffi's 64 MiB defaults, one thread each, unbounded)
  and now (OWASP's 19 MiB through the API's HashGate, 2 at once): each in its own process.

    python3 -m uv run --frozen python bench/people/run.py [--n 200]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import httpx
import psycopg
from argon2 import PasswordHasher
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.db import migrate
from blametrail_common.settings import PostgresSettings
from blametrail_mappings_api.app import create_app
from blametrail_mappings_api.passwords import HashGate, Passwords
from blametrail_mappings_api.repository import Repository, create_pool
from blametrail_mappings_api.settings import ApiSettings

PASSWORD = "a benchmark password"  # noqa: S105 - a throwaway of this run


async def _times(n: int, call: Callable[[], Awaitable[object]]) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def _line(name: str, ms: list[float]) -> str:
    p95 = statistics.quantiles(ms, n=20)[-1]
    return f"{name:<34} median {statistics.median(ms):7.2f} ms   p95 {p95:7.2f} ms   (n={len(ms)})"


BURST = 8


def _vm(field: str) -> float:
    """``field`` of /proc/self/status (VmRSS: resident now, VmHWM: its peak) in MiB."""
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _burst(bounded: bool) -> tuple[float, float]:
    """In a fresh process (the API's modules imported): its resident MiB before any hash, and
    its peak resident MiB after bursts of BURST checks at once."""
    idle = _vm("VmRSS")  # resident now, after the imports (their own peak may be higher)
    passwords = Passwords() if bounded else Passwords(PasswordHasher())
    stored = passwords.hash(PASSWORD)

    async def one(gate: HashGate) -> bool:
        if not bounded:
            return await asyncio.to_thread(passwords.verify, stored, PASSWORD)
        async with gate.admit():
            return await gate.run(passwords.verify, stored, PASSWORD)

    async def burst() -> None:
        gate = HashGate(2, 16)  # (an asyncio semaphore: one per event loop)
        assert all(await asyncio.gather(*(one(gate) for _ in range(BURST))))

    for _ in range(3):
        asyncio.run(burst())
    return idle, _vm("VmHWM")


def _peak_rss(bounded: bool) -> tuple[float, float]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        idle, peak = pool.apply(_burst, (bounded,))
        return float(idle), float(peak)


async def main(n: int) -> None:
    server = PostgresSettings().database_url
    name = f"bt_bench_people_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    dsn = psycopg.conninfo.make_conninfo(server, dbname=name)
    try:
        migrate(dsn)
        pool = create_pool(dsn, 4)
        await pool.open()
        repo = Repository(pool, SecretBox(generate_key()))
        settings = ApiSettings(login_account_failures=10**9, login_address_failures=10**9)
        app = create_app(settings, repo, {})
        key = await repo.create_api_key("bench")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api"
        ) as client:
            admin = {"Authorization": f"Bearer {key}"}
            made = await client.post(
                "/api/v1/users",
                headers=admin,
                json={"email": "b@bench.test", "name": "B", "password": PASSWORD, "role": "admin"},
            )
            assert made.status_code == 201, made.text
            body = {"email": "b@bench.test", "password": PASSWORD}
            sign_in = await _times(
                max(n // 4, 20), lambda: client.post("/api/v1/sessions", json=body)
            )
            passwords = Passwords()
            stored = passwords.hash(PASSWORD)
            verify = await _times(
                max(n // 4, 20), lambda: asyncio.to_thread(passwords.verify, stored, PASSWORD)
            )
            old = Passwords(PasswordHasher())  # argon2-cffi's defaults: the hashes before H2
            old_stored = old.hash(PASSWORD)
            verify_old = await _times(
                max(n // 4, 20), lambda: asyncio.to_thread(old.verify, old_stored, PASSWORD)
            )
            token = (await client.post("/api/v1/sessions", json=body)).json()["token"]
            session = {"Authorization": f"Bearer {token}"}
            for _ in range(20):  # warm both paths
                await client.get("/api/v1/me", headers=session)
                await client.get("/api/v1/me", headers=admin)
            by_key, by_session = [], []
            for _ in range(n):  # interleaved, so drift hits both alike
                by_key += await _times(1, lambda: client.get("/api/v1/me", headers=admin))
                by_session += await _times(1, lambda: client.get("/api/v1/me", headers=session))
        await pool.close()
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
    print(_line("sign-in (POST /api/v1/sessions)", sign_in))
    print(_line("baseline: argon2id verify alone", verify))
    print(
        f"  sign-in / verify: {statistics.median(sign_in) / statistics.median(verify):.2f}x (medians)"
    )
    print(_line("baseline: verify, 64 MiB (before)", verify_old))
    print(
        f"  verify 19 MiB / 64 MiB: {statistics.median(verify) / statistics.median(verify_old):.2f}x"
        " (medians)"
    )
    (idle_b, before_mib), (idle_n, now_mib) = _peak_rss(False), _peak_rss(True)
    print(
        f"peak RSS, {BURST} checks at once, before (64 MiB each, unbounded): {before_mib:6.1f} MiB"
        f" (resident before {idle_b:.1f}, +{before_mib - idle_b:.1f})"
    )
    print(
        f"peak RSS, {BURST} checks at once, now (19 MiB, 2 at once):        {now_mib:6.1f} MiB"
        f" (resident before {idle_n:.1f}, +{now_mib - idle_n:.1f})"
    )
    print(
        f"  now / before: {now_mib / before_mib:.2f}x peak,"
        f" {(now_mib - idle_n) / (before_mib - idle_b):.2f}x growth"
    )
    print(_line("GET /api/v1/me with an API key", by_key))
    print(_line("GET /api/v1/me with a session", by_session))
    print(
        f"  session / API key: {statistics.median(by_session) / statistics.median(by_key):.2f}x"
        f" (medians), +{statistics.median(by_session) - statistics.median(by_key):.2f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    asyncio.run(main(parser.parse_args().n))
