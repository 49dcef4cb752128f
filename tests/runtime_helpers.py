"""What tests/runtime_test.py and tests/runtime_failures_test.py share: train.py launched as one
process or as processes 0 and 1 of a run joined through 127.0.0.1."""

import os
import pathlib
import socket
import subprocess
import sys
import time

import runs
from configs import default

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMING = {"seconds", "invocation_seconds", "tokens_per_second", "elapsed_s"}


def args(workdir, steps=20, **overrides):
    settings = {
        "train.steps": steps,
        "train.log_every": 5,
        "train.eval_every": 10,
        "train.checkpoint_every": 1000,
        "train.eval_max_bytes": 4096,
        "train.progress": False,
        **overrides,
    }
    argv = ["--config=configs/default.py:size=test"]
    argv += [f"--config.{k}={v}" for k, v in settings.items()]
    return argv + [f"--workdir={workdir}"]


def config(steps=20):
    config = default.get_config("size=test")
    config.train.update(steps=steps, log_every=5, eval_every=10, checkpoint_every=1000)
    config.train.update(eval_max_bytes=4096, progress=False)
    return config


def free_port() -> int:
    """A port that is free, and whose successor (the rendezvous port) is free too."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        try:
            with socket.socket() as b:
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free pair of ports")


def cached_env(**extra) -> dict:
    """The environment of a launch, `extra` added, with the test session's compilation cache
    (tests/conftest.py) where it is on: the launched programs load and keep their programs
    there."""
    env = dict(os.environ, **extra)
    if os.environ.get("LMC_TEST_JAX_CACHE"):
        env["JAX_COMPILATION_CACHE_DIR"] = os.environ["LMC_TEST_JAX_CACHE"]
    return env


def start(argv, process_id=None, num_processes=2, port=None, timeout_s=30, log=None):
    """train.py with `argv`: one process, or process `process_id` of a run.

    A single process shares the test session's compilation cache (tests/conftest.py), so that
    the same run trained in the test's own process loads its programs instead of compiling
    them again; the processes of a multi-process run share it too (the cache key holds the
    devices of the run, so they load only what a run of the same shape compiled).
    """
    env = cached_env(LMC_DISTRIBUTED_TIMEOUT_S=str(timeout_s))
    if process_id is not None:
        env.update(
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            LMC_NUM_PROCESSES=str(num_processes),
            LMC_PROCESS_ID=str(process_id),
        )
        argv = [*argv, "--config.distributed=True"]
    return subprocess.Popen(
        [sys.executable, "train.py", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(log, "w") if log else subprocess.PIPE,  # noqa: SIM115
        text=True,
    )


def without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING}


def two_training(tmp_path):
    """Processes 0 and 1 of one long run, once it trains (its metrics file exists)."""
    port, workdir = free_port(), tmp_path / "run"
    argv = args(workdir, steps=100_000)
    first = start(argv, 0, port=port, log=tmp_path / "p0.log")
    second = start(argv, 1, port=port, log=tmp_path / "p1.log")
    deadline = time.monotonic() + 180
    while not (workdir / runs.METRICS_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return first, second
