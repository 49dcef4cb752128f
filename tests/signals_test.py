"""Signals to a training: Ctrl-C and preemption, whatever the run is doing when they come.

Each test starts train.py (or a small script) as a subprocess and signals it at a point it can
see from outside: a file the run writes.
"""

import pathlib
import shutil
import signal
import subprocess
import sys
import time

import runs
import train
from tests.runtime_test import _args, _config, _start
from training import runtime

REPO = pathlib.Path(__file__).resolve().parents[1]


def _wait_for(condition, what: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def _last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def test_ctrl_c_checkpoints_the_current_step_and_says_how_to_resume(tmp_path):
    workdir = tmp_path / "run"
    p = _start(_args(workdir, steps=100_000))
    _wait_for(lambda: len(runs.read_jsonl(workdir / runs.METRICS_FILE)) >= 2, "training")
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == runtime.INTERRUPTED_EXIT_CODE == 130, err[-2000:]
    line = _last_line(err)
    assert line.startswith("train.py: stopped by SIGINT at step ")
    assert line.endswith(" with a checkpoint: run the same command again to resume")
    step = int(line.split(" at step ")[1].split()[0])
    assert step in runs.checkpoint_steps(workdir)  # checkpoint_every is 1000: saved for Ctrl-C
    assert "Traceback" not in err


_HOLDS_A_STEP = """
import time
from training import runtime

with runtime.Preemption() as preemption:
    preemption.at_risk(True)  # a step in flight: a first Ctrl-C waits for its end
    print("ready", flush=True)
    for _ in range(1200):  # short sleeps: a signal on another thread is taken within 0.1 s
        time.sleep(0.1)
print("the second Ctrl-C did not stop the process", flush=True)
"""


def test_a_second_ctrl_c_stops_at_once():
    p = subprocess.Popen(
        [sys.executable, "-c", _HOLDS_A_STEP],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline() == "ready\n"
    p.send_signal(signal.SIGINT)
    time.sleep(0.5)  # the first one is taken (a request: the step goes on)
    assert p.poll() is None
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and out == ""
    assert err.strip().splitlines() == ["-c: interrupted again: stopped at once"]


def test_a_signal_right_after_a_resume_exits_for_requeue(tmp_path):
    workdir = tmp_path / "run"
    config = _config(10)
    config.train.checkpoint_every = 5
    train.train(config, workdir)
    # As if preempted after step 5's checkpoint: the run is not complete.
    shutil.rmtree(workdir / runs.CHECKPOINT_DIR / "10")
    (workdir / runs.RESULTS_FILE).unlink()
    p = _start(_args(workdir, steps=10, **{"train.checkpoint_every": 5}))
    lock = workdir / runtime.LOCK_FILE
    _wait_for(lambda: f'"pid": {p.pid}' in lock.read_text(), "the resumed run to hold its lock")
    p.send_signal(signal.SIGTERM)  # while it restores step 5 and compiles
    _, err = p.communicate(timeout=300)
    assert p.returncode == runtime.PREEMPTED_EXIT_CODE, err[-2000:]
    assert _last_line(err) == (
        "train.py: stopped by SIGTERM while starting, with nothing new to checkpoint: run the "
        "same command again to resume"
    )
    assert runs.checkpoint_steps(workdir) == [5]


def test_a_signal_during_compilation_stops_without_a_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    # Sixteen layers: the first step compiles for several seconds after config.json is written
    # (about 7 s on a quiet 2-core CPU; with 4 layers, 2 s, a window a loaded machine missed).
    # The signal ends the compilation, so the size costs nothing more.
    p = _start(_args(workdir, steps=100_000, **{"model.num_layers": 16}))
    _wait_for(lambda: (workdir / runs.CONFIG_FILE).exists(), "config.json")
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == runtime.PREEMPTED_EXIT_CODE, err[-2000:]
    assert _last_line(err).startswith("train.py: stopped by SIGTERM while starting, with nothing")
    assert runs.checkpoint_steps(workdir) == []
    assert not workdir.exists()  # a fresh run stopped before its first checkpoint: nothing left


def test_ctrl_c_while_the_modules_import_is_one_line(tmp_path):
    p = _start(_args(tmp_path / "run"))
    time.sleep(1.0)  # train.py imports cli first, then JAX for seconds
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err[-2000:]
