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
    assert result.stderr.strip().splitlines()[-1] == (
        "-c: stopped by SIGTERM while starting, with nothing new to checkpoint: run the same "
        "command again to resume"
    )
