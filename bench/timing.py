"""What the benchmarks time the same way."""

import time


def best_time(fn, repeats: int = 1) -> tuple[float, object]:
    """The least wall time of `repeats` calls of `fn`, and its last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result
