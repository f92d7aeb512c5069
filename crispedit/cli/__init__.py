"""The ``crispedit`` command: one module per command group, each adding its subcommands with ``register``.

Heavy libraries are imported inside the commands, so ``crispedit --help`` and ``validate`` are instant.
"""

from __future__ import annotations

import argparse
import logging

from crispedit.cli import build, ops, publish
from crispedit.mgt import cli as trainer

#: The command groups, in the order ``--help`` lists them.
GROUPS = (build, trainer, publish, ops)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crispedit", description="Build instruction-based image-editing datasets from a YAML recipe.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the engine decides")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)
