"""``blametrail apikey create --org SLUG`` (and the outbox relay as a command)."""

from __future__ import annotations

import argparse
from typing import Any

from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.settings import PostgresSettings, SecretsSettings

from blametrail_mappings_api.repository import Repository, create_pool

__all__ = ["apikey_command"]


def apikey_command(sub: Any) -> None:
    p = sub.add_parser("apikey", help="API keys of an organization.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create", help="Create an API key (and the organization if new); prints it once."
    )
    create.add_argument("--org", required=True, help="organization slug")
    create.set_defaults(handler=_create)


async def _create(args: argparse.Namespace) -> int:
    pool = create_pool(PostgresSettings().database_url, max_size=1)
    await pool.open()
    try:
        keys = (
            SecretsSettings().secret_keys.get_secret_value() or generate_key()
        )  # keys need no secrets
        print(await Repository(pool, SecretBox(keys)).create_api_key(args.org))
    finally:
        await pool.close()
    return 0
