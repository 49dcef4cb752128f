"""Classical compressors over a whole dataset: chunks in worker processes, streams in threads.

`compress_sizes` feeds every chunk once through each named compressor of `classical`, both ways
the paper rates them: each chunk on its own (blocks of chunks go to a process pool, since the
compressors hold the GIL) and the whole dataset as one stream (one thread per compressor, fed in
order). Memory stays bounded: at most a few blocks are in flight.

This module imports no JAX: worker processes import the main module again and start faster
without it.
"""

import collections
import concurrent.futures
import itertools
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator

from compressors import classical


class _StreamThread:
    """Feeds one unchunked compressor's stream from its own thread, in order."""

    def __init__(self, name: str):
        self.name, self.seconds = name, 0.0
        self._executor = concurrent.futures.ThreadPoolExecutor(1)
        self._stream = self._timed(classical.get(name).stream)
        self._pending: collections.deque = collections.deque()

    def _timed(self, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        self.seconds += time.perf_counter() - start
        return result

    def write(self, data: bytes) -> None:
        self._pending.append(self._executor.submit(self._timed, self._stream.write, data))
        while len(self._pending) > 4:  # bound the memory held in the queue
            self._pending.popleft().result()

    def close(self) -> int:
        while self._pending:
            self._pending.popleft().result()
        num_bytes = self._executor.submit(self._timed, self._stream.close).result()
        self._executor.shutdown()
        return num_bytes


def _executor(workers: int) -> concurrent.futures.Executor:
    """Worker processes for chunked compression; one worker runs in a thread of this process."""
    if workers == 1:
        return concurrent.futures.ThreadPoolExecutor(1)
    # Not fork: this process may run JAX's threads, which a fork would copy mid-flight. Workers
    # start from a clean process instead, and import the main module again.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)


def _blocks(items: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    iterator = iter(items)
    while block := list(itertools.islice(iterator, max(1, size))):
        yield block


def compress_sizes(
    chunks: Iterable[bytes],
    names: list[str],
    *,
    chunked: bool,
    unchunked: bool,
    workers: int = 0,
    block_chunks: int = 256,
    progress: Callable[[int], None] = lambda num_bytes: None,
) -> dict[str, dict[str, tuple[int, float]]]:
    """Compressed sizes of `chunks` under each classical compressor.

    Args:
      chunks: the dataset's chunks, read once.
      names: keys of `classical.CLASSICAL`.
      chunked: compress every chunk on its own.
      unchunked: compress the concatenation as one stream.
      workers: processes for the chunked pass (0: one per CPU core; 1: a thread of this one).
      block_chunks: chunks per worker task.
      progress: called with the bytes of each block once it is done.

    Returns:
      name -> {'chunked': (summed compressed bytes, seconds summed over workers), 'unchunked':
      (compressed bytes, seconds)}, with the keys that were asked for.
    """
    workers = workers or os.cpu_count() or 1
    totals = {name: [0, 0.0] for name in names}
    streams = [_StreamThread(name) for name in names] if unchunked else []
    pool = _executor(workers) if chunked else None
    pending: collections.deque = collections.deque()

    def collect():
        future, num_bytes = pending.popleft()
        for name, (size, seconds) in future.result().items():
            totals[name][0] += size
            totals[name][1] += seconds
        progress(num_bytes)

    try:
        for block in _blocks(chunks, block_chunks):
            num_bytes = sum(map(len, block))
            if pool is not None:
                pending.append(
                    (pool.submit(classical.compress_chunks, tuple(names), block), num_bytes)
                )
                while len(pending) > 2 * workers:
                    collect()
            else:
                progress(num_bytes)
            joined = b"".join(block) if streams else b""
            for stream in streams:
                stream.write(joined)
        while pending:
            collect()
        stream_sizes = {s.name: (s.close(), s.seconds) for s in streams}
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    out: dict[str, dict[str, tuple[int, float]]] = {name: {} for name in names}
    for name in names:
        if chunked:
            out[name]["chunked"] = (totals[name][0], totals[name][1])
        if unchunked:
            out[name]["unchunked"] = stream_sizes[name]
    return out
