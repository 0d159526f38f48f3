"""Command-line interface: ``recsys COMMAND``. Each module below registers its commands on ``app``."""

from __future__ import annotations

# Importing a command module registers its commands on ``app``; heavy libraries are imported inside
# the commands, so ``recsys --help`` stays fast. One line per module:
from recsys.cli import data  # noqa: F401  (validate, convert)
from recsys.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
