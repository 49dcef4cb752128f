"""training.runtime: several processes as one run (no Slurm), signals, the run lock.

The multi-process tests start train.py twice on this machine, joined through 127.0.0.1 as the
module docstring of training/runtime.py describes; tests/sweep_test.py does the same through a
real Slurm.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

import runs
import train
from configs import default
from training import runtime

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMING = {"seconds", "invocation_seconds", "tokens_per_second", "elapsed_s"}
# Two processes split each batch in two, so the gradient's sums run in another order: the
# parameters drift apart by float rounding (measured: test bits/byte 4e-8 apart after 20 steps).
MULTI_PROCESS_RTOL = 1e-5


def _args(workdir, steps=20, **overrides):
    settings = {
        "train.steps": steps,
        "train.log_every": 5,
        "train.eval_every": 10,
        "train.checkpoint_every": 1000,
        "train.eval_max_bytes": 4096,
        "train.progress": False,
        **overrides,
    }
    args = ["--config=configs/default.py:size=test"]
    args += [f"--config.{k}={v}" for k, v in settings.items()]
    return args + [f"--workdir={workdir}"]


def _config(steps=20):
    config = default.get_config("size=test")
    config.train.update(steps=steps, log_every=5, eval_every=10, checkpoint_every=1000)
    config.train.update(eval_max_bytes=4096, progress=False)
    return config


def _free_port() -> int:
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


def _start(args, process_id=None, num_processes=2, port=None, timeout_s=30, log=None):
    env = dict(os.environ, LMC_DISTRIBUTED_TIMEOUT_S=str(timeout_s))
    if process_id is not None:
        env.update(
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            LMC_NUM_PROCESSES=str(num_processes),
            LMC_PROCESS_ID=str(process_id),
        )
        args = [*args, "--config.distributed=True"]
    return subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(log, "w") if log else subprocess.PIPE,  # noqa: SIM115
        text=True,
    )


def _without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING}


def test_two_processes_train_as_one(tmp_path):
    port = _free_port()
    procs = [_start(_args(tmp_path / "two"), i, port=port) for i in (0, 1)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "Trained" in outputs[0][0] and "Trained" not in outputs[1][0]  # process 0 reports
    two = runs.load_results(tmp_path / "two")
    one = train.train(_config(), tmp_path / "one")
    assert two["step"] == one["step"] == 20
    for key in ("loss", "eval_bits_per_byte", "test_bits_per_byte"):
        assert two[key] == pytest.approx(one[key], rel=MULTI_PROCESS_RTOL), key
    lines = runs.read_jsonl(tmp_path / "two" / runs.METRICS_FILE)
    assert [r["step"] for r in lines if "eval_bits_per_byte" in r] == [10, 20]  # written once


def test_processes_with_different_configs_stop_at_once(tmp_path):
    port = _free_port()
    args = _args(tmp_path / "run")
    procs = [_start(args, 0, port=port), _start([*args, "--config.seed=1"], 1, port=port)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 1
        assert (
            err.strip()
            .splitlines()[-1]
            .endswith(
                "process(es) [1] were started with another config than process 0 (compare their "
                "command lines, e.g. the seed): every process of a run needs the same config."
            )
        )
    assert not (tmp_path / "run").exists()  # a failed start leaves no directory


def test_a_process_that_never_starts_is_named(tmp_path):
    start = time.monotonic()
    p = _start(_args(tmp_path / "run"), 0, num_processes=2, port=_free_port(), timeout_s=3)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1 and time.monotonic() - start < 60
    assert err.strip().splitlines() == [
        "train.py: process(es) [1] of 2 did not start within 3 s (crashed, or never launched): "
        "see their logs"
    ]


def _two_training(tmp_path):
    """Processes 0 and 1 of one long run, once it trains (its metrics file exists)."""
    port, workdir = _free_port(), tmp_path / "run"
    args = _args(workdir, steps=100_000)
    first = _start(args, 0, port=port, log=tmp_path / "p0.log")
    second = _start(args, 1, port=port, log=tmp_path / "p1.log")
    deadline = time.monotonic() + 180
    while not (workdir / runs.METRICS_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return first, second


def test_a_dead_process_stops_the_others_at_once(tmp_path):
    first, second = _two_training(tmp_path)
    second.kill()  # SIGKILL: no goodbye
    killed = time.monotonic()
    first.wait(timeout=60)
    assert first.returncode == 1 and time.monotonic() - killed < 10
    last = (tmp_path / "p0.log").read_text().strip().splitlines()[-1]
    assert last.startswith("process 1 of the run died")


def test_killing_process_0_stops_the_others_with_one_line(tmp_path):
    # Process 0 also hosts JAX's coordination service: its death made process 1's JAX client
    # log a dozen lines and abort, racing the watcher's line.
    first, second = _two_training(tmp_path)
    logged = len((tmp_path / "p1.log").read_bytes())
    first.kill()  # SIGKILL: no goodbye
    second.wait(timeout=60)
    after = (tmp_path / "p1.log").read_bytes()[logged:].decode()
    assert second.returncode == 1
    assert after.strip().splitlines() == [
        "process 0 of the run died (its connection closed without goodbye): stopping process 1 too."
    ]


def test_sigusr1_checkpoints_and_the_resumed_run_matches_an_uninterrupted_one(tmp_path):
    workdir = tmp_path / "interrupted"
    p = _start(_args(workdir, steps=60))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if len(runs.read_jsonl(workdir / runs.METRICS_FILE)) >= 3:
            break
        time.sleep(0.1)
    p.send_signal(signal.SIGUSR1)
    _, err = p.communicate(timeout=120)
    assert p.returncode == runtime.PREEMPTED_EXIT_CODE, err[-2000:]
    assert "stopped by SIGUSR1 at step" in err.strip().splitlines()[-1]
    assert runs.load_results(workdir) is None  # not complete: no tool mistakes it for done
    resumed = train.train(_config(60), workdir)
    straight = train.train(_config(60), tmp_path / "straight")
    assert _without_timing(resumed) == _without_timing(straight)
    lines = [_without_timing(r) for r in runs.read_jsonl(workdir / runs.METRICS_FILE)]
    expected = [_without_timing(r) for r in runs.read_jsonl(tmp_path / "straight/metrics.jsonl")]
    assert lines == expected  # no duplicated or missing lines after the resume


def test_a_second_training_in_the_same_directory_is_refused(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    with runtime.RunLock(tmp_path):
        with pytest.raises(ValueError, match="is being trained by .*pid"):
            train.train(_config(2), tmp_path)
    assert train.train(_config(2), tmp_path)["step"] == 2  # released


def test_a_failed_start_leaves_no_directory(tmp_path):
    config = _config(2)
    config.data.path = str(tmp_path / "no_such_corpus.txt")
    with pytest.raises(ValueError, match="No such file"):
        train.train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_lock_holder_is_recorded(tmp_path):
    with runtime.RunLock(tmp_path):
        holder = json.loads((tmp_path / runtime.LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
