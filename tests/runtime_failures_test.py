"""training.runtime: a run's processes killed or signalled while they train.

Each test starts train.py as one process, or as processes 0 and 1 of a run joined through
127.0.0.1 (tests/runtime_helpers.py), and kills or signals it once it trains.
"""

import signal
import time

import runs
import train
from tests.runtime_helpers import args as _args
from tests.runtime_helpers import config as _config
from tests.runtime_helpers import start as _start
from tests.runtime_helpers import two_training as _two_training
from tests.runtime_helpers import without_timing as _without_timing
from training import runtime


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
