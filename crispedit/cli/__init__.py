"""The ``crispedit`` command: one module per command group, each adding its subcommands with ``register``.

Heavy libraries are imported inside the commands, so ``crispedit --help`` and ``validate`` are instant.
"""

from __future__ import annotations

import argparse
import logging
import sys

from crispedit.cli import build, models, ops, plan, publish
from crispedit.mgt import cli as trainer

#: The command groups, in the order ``--help`` lists them.
GROUPS = (build, plan, models, trainer, publish, ops)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crispedit", description="Build instruction-based image-editing datasets from a YAML recipe.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the engine decides")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from crispedit.core.outputs import OutputRefused
    from crispedit.core.paths import UnsafePathError
    from crispedit.core.redact import install_log_scrubber, scrub_text

    install_log_scrubber()  # whoever logs (httpx logs request URLs at INFO), no credential reaches the terminal
    try:
        return int(args.func(args) or 0)
    except (OutputRefused, UnsafePathError, PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as error:
        # a user's mistake (or a path they cannot write): one line, the traceback with -v
        if args.verbose:
            logging.getLogger("crispedit").exception("the command stopped")
        print(f"error: {scrub_text(str(error))}", file=sys.stderr)
        return 2
