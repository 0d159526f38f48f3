"""Command-line interface: ``recsys COMMAND``. Each module below registers its commands on ``app``."""

from __future__ import annotations

# Importing a command module registers its commands on ``app``; heavy libraries are imported inside
# the commands, so ``recsys --help`` stays fast. One line per module:
from recsys.cli import (
    data,  # noqa: F401  (validate, convert)
    embed,  # noqa: F401  (embed)
    evaluate,  # noqa: F401  (evaluate)
    models,  # noqa: F401  (models list/current/rollback)
    report,  # noqa: F401  (report)
    retrain,  # noqa: F401  (retrain)
    runs,  # noqa: F401  (runs list/show/compare)
    serve,  # noqa: F401  (serve)
    train,  # noqa: F401  (train, demo)
)
from recsys.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
