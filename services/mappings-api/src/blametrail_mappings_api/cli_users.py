"""``blametrail users create|list|disable``: people of an organization, from a shell."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from blametrail_common.settings import PostgresSettings
from rich.console import Console
from rich.table import Table

from blametrail_mappings_api.errors import Conflict, NotFound
from blametrail_mappings_api.passwords import MIN_LENGTH, Passwords
from blametrail_mappings_api.store.db import Pool, create_pool
from blametrail_mappings_api.store.users import UserStore

__all__ = ["users_command"]


def users_command(sub: Any) -> None:
    p = sub.add_parser("users", help="Users of an organization (sign-in to the web UI).")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="Add a user (the organization is made if new).")
    create.add_argument("--org", required=True, help="organization slug")
    create.add_argument("--email", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=["admin", "member"])
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    create.set_defaults(handler=_create)
    listing = actions.add_parser("list", help="List an organization's users.")
    listing.add_argument("--org", required=True, help="organization slug")
    listing.set_defaults(handler=_list)
    disable = actions.add_parser("disable", help="Disable a user (ends their sessions).")
    disable.add_argument("--email", required=True)
    disable.set_defaults(handler=_disable)


@asynccontextmanager
async def _pool() -> AsyncIterator[Pool]:
    pool = create_pool(PostgresSettings().database_url, max_size=1)
    await pool.open()
    try:
        yield pool
    finally:
        await pool.close()


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise SystemExit("the two passwords differ")
    return first


async def _create(args: argparse.Namespace) -> int:
    password = _password(args.password_stdin)
    if len(password) < MIN_LENGTH:
        print(f"error: a password has at least {MIN_LENGTH} characters", file=sys.stderr)
        return 2
    async with _pool() as pool:
        users = UserStore(pool)
        org = await users.org_id(args.org, create=True)
        try:
            row = await users.create(
                org, args.email, args.name, args.role, Passwords().hash(password)
            )
        except Conflict as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(f"created {row['role']} {row['email']} ({row['id']}) in {args.org}")
    return 0


async def _list(args: argparse.Namespace) -> int:
    async with _pool() as pool:
        users = UserStore(pool)
        try:
            org = await users.org_id(args.org, create=False)
        except NotFound:
            print(f"error: no organization {args.org!r}", file=sys.stderr)
            return 1
        rows, cursor = await users.list(org, None, 200)
        while cursor:
            more, cursor = await users.list(org, cursor, 200)
            rows += more
    table = Table("email", "name", "role", "disabled", "created")
    for r in rows:
        table.add_row(
            r["email"], r["name"], r["role"], "yes" if r["disabled"] else "", str(r["created_at"])
        )
    Console().print(table)
    print(f"{len(rows)} users")
    return 0


async def _disable(args: argparse.Namespace) -> int:
    async with _pool() as pool:
        try:
            row = await UserStore(pool).disable_by_email(args.email, datetime.now(UTC))
        except NotFound:
            print(f"error: no user {args.email!r}", file=sys.stderr)
            return 1
        except Conflict as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(f"disabled {row['email']}; their sessions are ended")
    return 0
