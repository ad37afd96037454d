"""``blametrail-devstack``: install, start and stop the local Kafka + Postgres.

blametrail-devstack install     # jars, JDK, Maven, Postgres when missing
blametrail-devstack up          # start (idempotent), print and write .local/stack.env
blametrail-devstack down        # stop
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from blametrail_common.crypto import generate_key

from blametrail_devstack import demo
from blametrail_devstack.install import ensure_all
from blametrail_devstack.paths import local_dir
from blametrail_devstack.services import start_all, stop_all
from blametrail_devstack.stack import LocalStack


def _stack(args: argparse.Namespace) -> LocalStack:
    return LocalStack.at(Path(args.home), args.kafka_port, args.pg_port)


def read_env(path: Path) -> dict[str, str]:
    """The variables of an ``export K=V`` file (empty when it does not exist)."""
    current: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                k, v = line[len("export ") :].split("=", 1)
                current[k] = v
    return current


def write_env(path: Path, values: dict[str, str]) -> None:
    """Merge ``values`` into an ``export K=V`` file that a shell can ``source``."""
    current = {**read_env(path), **values}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"export {k}={v}\n" for k, v in sorted(current.items())))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="blametrail-devstack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command", choices=["install", "up", "down", "env", "services-up", "services-down", "demo"]
    )
    parser.add_argument("--home", default=str(local_dir() / "stack"))
    parser.add_argument(
        "--kafka-port", type=int, default=int(os.environ.get("BLAMETRAIL_DEV_KAFKA_PORT", 19092))
    )
    parser.add_argument(
        "--pg-port", type=int, default=int(os.environ.get("BLAMETRAIL_DEV_PG_PORT", 55432))
    )
    parser.add_argument("--env-file", default=str(local_dir() / "stack.env"))
    args = parser.parse_args(argv)
    stack = _stack(args)
    if args.command == "install":
        ensure_all()
    elif args.command == "up":
        ensure_all()
        took = stack.start()
        env_file = Path(args.env_file)
        keys = (
            read_env(env_file).get("BLAMETRAIL_SECRET_KEYS") or generate_key()
        )  # kept: data stays readable
        kept = read_env(env_file)
        web_key = kept.get("BLAMETRAIL_WEB_SECRET_KEY") or secrets.token_urlsafe(32)
        write_env(
            env_file,
            {**stack.env(), "BLAMETRAIL_SECRET_KEYS": keys, "BLAMETRAIL_WEB_SECRET_KEY": web_key},
        )
        print(f"postgres {stack.postgres.dsn()} ready in {took['postgres']:.1f}s")
        print(f"kafka    {stack.kafka.bootstrap} ready in {took['kafka']:.1f}s")
    elif args.command == "down":
        stack.stop()
        print("local stack stopped")
    elif args.command == "services-up":
        write_env(Path(args.env_file), start_all())
    elif args.command == "demo":
        env = {**read_env(Path(args.env_file))}
        seeded = demo.seed(env)
        write_env(Path(args.env_file), seeded)
        if seeded:  # a new tenant: a sign-in recorded for a forgotten one is no use
            (local_dir() / "demo-credentials").unlink(missing_ok=True)
        env = read_env(Path(args.env_file))
        demo.ensure_admin(env, local_dir() / "demo-credentials")
        try:
            incident = demo.push_webhook(env)
        except demo.DemoTimeout as e:
            print(f"demo: {e}", file=sys.stderr)
            return 1
        print("\n".join(demo.describe(incident)))
        print("\n".join(demo.show_links(env, incident)))
        oauth = demo.connect_public_app(env)
        print(
            f"public app: Sentry organization {oauth['sentry_org_slug']!r} connected by OAuth"
            f" (connection {oauth['id']}, token expires {oauth['token_expires_at']})"
        )
    elif args.command == "services-down":
        stop_all()
    else:
        for k, v in stack.env().items():
            print(f"export {k}={v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
