"""Shared test fixtures: small real data from ../shared/data when present."""

import os
import pathlib
import shutil
import tempfile

import jax
import pytest

_CREATED = []  # the folders this process made (pytest-xdist's workers inherit the controller's)


def _session_folder(variable: str, prefix: str) -> str:
    """$variable, or a new temporary folder that it then names (removed at the session's end)."""
    if variable not in os.environ:
        os.environ[variable] = tempfile.mkdtemp(prefix=prefix)
        _CREATED.append(os.environ[variable])
    return os.environ[variable]


# compress.py's persistent compilation cache (models.numerics.configure_coding) goes to a folder
# of this test session, not the user's ~/.cache, and is shared by its subprocesses.
_session_folder("LMC_COMPILE_CACHE", "lmc-jax-cache-")

# The test processes' own compiles go through a persistent cache of this session too, in another
# folder (a subprocess uses it only where its launch says so: tests/runtime_helpers.py):
# train.train builds its steps afresh on every call, so the many small runs of the suite
# compile the same programs again and again. A hit returns what compiling the same program
# would (the cache's key: its HLO, compile options, XLA flags, devices and jax version); a
# program that differs in any of them is compiled. LMC_TEST_JAX_CACHE='' turns it off.
# Every program is kept, however quick its compile (jax keeps those of 1 s and more by default):
# most of the suite's programs compile in well under a second, and the two workers and the
# subprocesses that use the cache compile many of them twice. Measured on the 2-core machine
# (README's command): 977 CPU-seconds with a 0.5 s floor, 929 with none.
if os.environ.get("LMC_TEST_JAX_CACHE") != "":
    _folder = _session_folder("LMC_TEST_JAX_CACHE", "lmc-test-jax-cache-")
    jax.config.update("jax_compilation_cache_dir", _folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # for those subprocesses

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def slurm_cluster():
    """Skips (or fails, with LMC_REQUIRE_SLURM=1, as CI sets it) unless a Slurm controller
    answers."""
    from cluster import slurm

    try:
        slurm.check_available()
    except slurm.SlurmUnavailable as e:
        if os.environ.get("LMC_REQUIRE_SLURM") == "1":
            pytest.fail(f"LMC_REQUIRE_SLURM=1, but {e}")
        pytest.skip(str(e))


def _train_tiny(workdir, steps: int = 2, seed: int = 0) -> str:
    """Trains a byte-level run of the test preset at a 32-byte context into `workdir`."""
    import train
    from configs import default

    config = default.get_config("size=test")
    config.model.context_length = 32
    config.train.steps = steps
    config.train.batch_size = 4
    config.train.eval_max_bytes = 256
    config.train.progress = False
    config.seed = seed
    train.train(config, workdir)
    return str(workdir)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> str:
    """A byte-level run of the test preset trained 2 steps at a 32-byte context."""
    return _train_tiny(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def train_tiny():
    """`train_tiny(workdir, steps=2, seed=0) -> workdir`: another run like `tiny_run`'s."""
    return _train_tiny


@pytest.fixture
def enwik5_path() -> pathlib.Path:
    path = SHARED_DATA / "text" / "enwik5"
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def pytest_sessionfinish(session, exitstatus):
    del session, exitstatus
    for folder in _CREATED:
        shutil.rmtree(folder, ignore_errors=True)
