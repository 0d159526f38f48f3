"""Command-line interface: ``recsys COMMAND``. Each module below registers its commands on ``app``."""

from __future__ import annotations

# Importing a command module registers its commands on ``app``; heavy libraries are imported inside
# the commands, so ``recsys --help`` stays fast. One line per module:
from recsys.cli import data  # noqa: F401  (validate, convert)
from recsys.cli import embed  # noqa: F401  (embed)
from recsys.cli import evaluate  # noqa: F401  (evaluate)
from recsys.cli import models  # noqa: F401  (models list/current/rollback)
from recsys.cli import serve  # noqa: F401  (serve)
from recsys.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
