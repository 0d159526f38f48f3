"""Command-line interface: ``recsys COMMAND``. Each module below registers its commands on ``app``."""

from __future__ import annotations

from recsys.cli.app import app

# Importing a command module registers its commands on ``app``; heavy libraries are imported inside
# the commands, so ``recsys --help`` stays fast. One line per module:


def main() -> None:
    app()


__all__ = ["app", "main"]
