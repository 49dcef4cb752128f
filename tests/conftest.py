"""Shared test fixtures: small real data from ../shared/data when present."""

import os
import pathlib
import tempfile

import pytest

# compress.py's persistent compilation cache (models.numerics.configure_coding) goes to a folder
# of this test session, not the user's ~/.cache, and is shared by its subprocesses.
os.environ.setdefault("LMC_COMPILE_CACHE", tempfile.mkdtemp(prefix="lmc-jax-cache-"))

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def enwik5_path() -> pathlib.Path:
    path = SHARED_DATA / "text" / "enwik5"
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path
