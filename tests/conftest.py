"""Shared test fixtures: small real data from ../shared/data when present."""

import pathlib

import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def enwik5_path() -> pathlib.Path:
    path = SHARED_DATA / "text" / "enwik5"
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path
