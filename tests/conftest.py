"""Shared fixtures. Tests that need ``../shared/data`` skip without it, except in CI."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _shared(name: str) -> Path:
    folder = SHARED_DATA / name
    if not folder.is_dir():
        if os.environ.get("REQUIRE_SHARED_DATA") == "1":
            pytest.fail(f"REQUIRE_SHARED_DATA=1 but {folder} is missing")
        pytest.skip(f"needs the shared dataset at {folder} (not on a user's machine)")
    return folder


@pytest.fixture(autouse=True, scope="session")
def _runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """`recsys evaluate` and `recsys train` record every run in $RECSYS_RUNS_DIR, else ./recsys-runs:
    the tests' runs go to a temporary folder, never into the working directory."""
    before = os.environ.get("RECSYS_RUNS_DIR")
    os.environ["RECSYS_RUNS_DIR"] = str(tmp_path_factory.mktemp("recsys-runs"))
    yield
    if before is None:
        del os.environ["RECSYS_RUNS_DIR"]
    else:
        os.environ["RECSYS_RUNS_DIR"] = before


@pytest.fixture(scope="session")
def amazon_dir() -> Path:
    return _shared("amazon-scientific")


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    return _shared("movielens-latest-small")
