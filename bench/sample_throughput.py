"""Sampling throughput of compressors as generative models (bytes sampled per second).

    python bench/sample_throughput.py                 # gzip 1,000 bytes; the others fewer
    python bench/sample_throughput.py --quick         # a few seconds

Prompt: 2,048 bytes of the embedded pydocs corpus; context 2,048 bytes; seed 0. Each line gives
the compressor, lookahead K and continuations M, worker processes, bytes sampled and seconds.
"""

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main():
    from compressors import generative
    from data import corpus

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    prompt = corpus.pydocs_bytes()[10_000:12_048]
    scale = 10 if args.quick else 1
    cases = [  # (name, lookahead, continuations, workers, bytes)
        ("gzip", 1, 1, 0, 1000),
        ("gzip", 1, 1, 2, 1000),
        ("gzip", 4, 4, 2, 200),
        ("zstd", 1, 1, 2, 200),
        ("bzip2", 1, 1, 2, 200),
        ("lzma", 1, 1, 2, 50),
        ("brotli", 1, 1, 2, 20),
    ]
    print(f"{'compressor':>10} {'K':>3} {'M':>3} {'workers':>7} {'bytes':>6} {'s':>7} {'B/s':>8}")
    for name, lookahead, num_continuations, workers, num_bytes in cases:
        num_bytes = max(1, num_bytes // scale)
        compress = generative.ClassicalCompress(name)
        with generative.CandidateScorer(compress, workers) as scorer:
            scorer.bits(prompt, [b"x"] * max(workers, 1))  # start the pool outside the clock
            start = time.perf_counter()
            generative.sample_bytes(
                scorer,
                prompt,
                num_bytes,
                seed=0,
                lookahead=lookahead,
                num_continuations=num_continuations,
            )
            seconds = time.perf_counter() - start
        m = num_continuations if lookahead > 1 else "-"
        print(
            f"{name:>10} {lookahead:>3} {m:>3} {workers:>7} {num_bytes:>6} {seconds:>7.2f} "
            f"{num_bytes / seconds:>8.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
