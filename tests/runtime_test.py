"""training.runtime: several processes as one run (no Slurm), the run lock.

The multi-process tests start train.py twice on this machine, joined through 127.0.0.1 as the
module docstring of training/runtime.py describes (tests/runtime_helpers.py);
tests/runtime_failures_test.py kills and signals such runs; tests/sweep_test.py does the same
through a real Slurm.
"""

import json
import os
import socket
import time

import pytest

import runs
import train
from tests.runtime_helpers import args as _args
from tests.runtime_helpers import config as _config
from tests.runtime_helpers import free_port as _free_port
from tests.runtime_helpers import start as _start
from training import runtime

# Two processes split each batch in two, so the gradient's sums run in another order: the
# parameters drift apart by float rounding (measured: test bits/byte 4e-8 apart after 20 steps).
MULTI_PROCESS_RTOL = 1e-5


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
