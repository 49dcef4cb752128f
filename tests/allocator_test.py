"""allocator.keep_freed_memory: a large block freed and allocated again is not faulted in again."""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PROBE = """
import resource, sys
import numpy as np
import allocator
kept = allocator.keep_freed_memory()
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.ones(64 << 20, np.uint8)  # 64 MB: above glibc's largest mmap threshold
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del block
print(kept, faults[-1])
"""
HUGE_PAGES = (64 << 20) // (2 << 20)  # the fewest faults a fresh 64 MB block takes (2 MB pages)


def _probe(env_value: str):
    env = {"PATH": "/usr/bin:/bin", "LMC_MALLOC": env_value, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    kept, faults = _probe("keep")
    assert kept and faults < HUGE_PAGES // 2
    kept, faults = _probe("default")  # glibc's own settings: every page again
    assert not kept and faults >= HUGE_PAGES
