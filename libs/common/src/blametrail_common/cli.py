"""``blametrail``: the operator command line.

Subcommands are contributed by installed packages through the ``blametrail.commands`` entry
point group: each entry point is a function taking the subparsers object and registering one
command whose handler is set with ``set_defaults(handler=...)``. Handlers return an exit code
and may be coroutines.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blametrail", description="BlameTrail operator commands.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for ep in sorted(entry_points(group="blametrail.commands"), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = args.handler(args)
    if inspect.isawaitable(result):
        result = asyncio.run(result)  # type: ignore[arg-type]
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
