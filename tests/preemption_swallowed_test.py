"""A stop raised where Python swallows exceptions still ends the run with its one line."""

import os
import subprocess
import sys

from training import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The signal is taken inside a __del__: its Preempted is reported as "Exception ignored" and the
# program goes on, as when the signal lands in JAX's garbage-collection callback.
_SWALLOWED = """
import signal, sys, time
from training import runtime
runtime.Preemption.EXIT_GRACE_S = 0.5
class Dropped:
    def __del__(self):
        signal.raise_signal(signal.SIGTERM)
with runtime.Preemption():
    Dropped()
    print("went on", flush=True)
    time.sleep(60)
"""


def test_a_swallowed_stop_still_exits_with_its_line():
    result = subprocess.run(
        [sys.executable, "-c", _SWALLOWED], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == runtime.PREEMPTED_EXIT_CODE, result.stderr[-2000:]
    assert result.stdout == "went on\n"
    assert result.stderr.strip().splitlines() == [  # the stop's line alone, no "Exception ignored"
        "-c: stopped by SIGTERM while starting, with nothing new to checkpoint: run the same "
        "command again to resume"
    ]


# The same, but the program reaches the end of its first step (as train.py's loop does once
# a compilation that swallowed the stop is done): the stop is raised there, with nothing saved,
# not turned into a request that checkpoints the step.
_SWALLOWED_THEN_A_STEP = """
import signal
from training import runtime
runtime.Preemption.EXIT_GRACE_S = 60
class Dropped:
    def __del__(self):
        signal.raise_signal(signal.SIGTERM)
try:
    with runtime.Preemption() as preemption:
        Dropped()
        print("went on", flush=True)
        preemption.at_risk(True)
        print("the step was kept at risk", flush=True)
except runtime.Preempted as stop:
    print(f"{stop.exit_status} {stop.alone} {stop}", flush=True)
"""


def test_a_swallowed_stop_is_raised_again_at_the_end_of_the_first_step():
    result = subprocess.run(
        [sys.executable, "-c", _SWALLOWED_THEN_A_STEP],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        "went on",
        f"{runtime.PREEMPTED_EXIT_CODE} True stopped by SIGTERM while starting, with nothing new "
        "to checkpoint: run the same command again to resume",
    ]
    assert result.stderr == ""  # swallowed ("went on"), and not reported: its line is the stop's
