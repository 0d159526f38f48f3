"""Shared fixtures. Tests that need ``../shared/data`` skip without it, except in CI."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def amazon_dir() -> Path:
    return _shared("amazon-scientific")


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    return _shared("movielens-latest-small")
