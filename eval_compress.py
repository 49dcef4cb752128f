r"""Compression rates of classical compressors and trained models on one dataset (Table 1).

  python eval_compress.py --config=configs/eval.py --workdir=/tmp/eval    # pydocs, gzip + LZMA2
  python eval_compress.py --config=configs/eval.py --config.dataset=enwik9 \
      --config.compressors=gzip,lzma,png,flac,lm:runs/200K,lm:runs/3.2M --workdir=results
  python eval_compress.py --config=configs/eval.py --config.dataset=images \
      --config.compressors=gzip,lzma,png,png_patch,flac,zstd,bzip2,brotli --workdir=results

Datasets are `data.sources` specs, compressors `compressors.COMPRESSORS` names; a trained model is
`lm:RUN_DIR` (a train.py workdir). Each (compressor, dataset, chunking) gives one record, appended
to WORKDIR/results.jsonl and results.csv (a record with the same compressor, dataset, chunking,
chunk size, chunk count and 7-bit mode replaces the older one), and the table of every record in
WORKDIR is printed, datasets as columns, as in the paper's Table 1.

Accounting (Deletang et al., 2024, and its reference code):
* raw rate = compressed / raw bytes; adjusted rate = (compressed + 2 bytes x parameters) / raw
  (0 parameters for classical compressors); bits per byte = 8 x compressed / raw.
* Chunked classical compressors code each chunk on its own, and the container overhead is
  counted once: the length of one compressed zero byte (`classical.header_bytes`) is subtracted
  for every chunk but the first. Unchunked, the whole dataset is one stream.
* A model codes each chunk on its own and is charged every byte its coder writes (4 bytes of
  final rANS state per chunk, no header), next to its log-loss (sum of -log2 p / 8).
* The 7-bit modes (`--config.seven_bit`) are described in `compressors/__init__.py`.
* seconds: time spent compressing, summed over the workers for chunked classical compressors
  (the reference's running time), the wall clock of the log-loss and coded passes for models.

Work is spread out: classical chunked compression over `workers` processes, unchunked streams in
threads, model chunks over all local devices (`compressors.language_model`); with several hosts
each takes every process_count-th chunk for the models and totals are summed across hosts
(classical compressors run on host 0).
"""

import collections
import concurrent.futures
import csv
import itertools
import json
import multiprocessing
import os
import pathlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags, logging

import compressors
from compressors import classical
from data import sources

RESULTS_JSONL = "results.jsonl"
RESULTS_CSV = "results.csv"
BYTES_PER_PARAM = 2  # the paper's adjusted rate charges each parameter as 2 bytes
CHUNKINGS = ("chunked", "unchunked", "both")
_KEY = ("compressor", "dataset", "chunking", "chunk_size", "num_chunks", "seven_bit")


def rates(compressed_bytes: float, raw_bytes: int, num_params: int = 0) -> dict[str, float]:
    """Raw and adjusted compression rates and bits per byte.

    Raises:
      ValueError: no raw bytes.
    """
    if raw_bytes <= 0:
        raise ValueError("No data to rate: the dataset yielded no bytes.")
    return {
        "raw_rate": compressed_bytes / raw_bytes,
        "adjusted_rate": (compressed_bytes + BYTES_PER_PARAM * num_params) / raw_bytes,
        "bits_per_byte": 8 * compressed_bytes / raw_bytes,
    }


class _Progress:
    """A tqdm bar over bytes (MB/s) when enabled on host 0, else nothing."""

    def __init__(self, enabled: bool, total: int | None, desc: str):
        self._bar = None
        if enabled and _hosts()[0] == 0:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr, leave=False
            )

    def update(self, num_bytes: int) -> None:
        if self._bar is not None:
            self._bar.update(num_bytes)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _Counted:
    """Wraps a chunk iterator: applies the 7-bit mask and counts chunks, bytes, missed bits."""

    def __init__(self, chunks: Iterator[bytes], mode: str):
        self._chunks, self._mask = chunks, compressors.SEVEN_BIT[mode]
        self.num_chunks = self.raw_bytes = self.missed_bits = 0

    def __iter__(self):
        for chunk in self._chunks:
            self.num_chunks += 1
            self.raw_bytes += len(chunk)
            if self._mask is not None:
                chunk, missed = self._mask(chunk)
                self.missed_bits += missed
            yield chunk


def _expected_bytes(config, source: sources.Source) -> int | None:
    count = config.num_chunks or source.default_num_chunks
    return count * config.chunk_size if count else None


def _record(config, source, compressor, chunking, counted: _Counted, compressed, params, seconds):
    """One result row; `compressed` is before the 7-bit rescaling."""
    mode = _seven_bit(config, source, compressor)
    if counted.missed_bits:
        compressed *= compressors.seven_bit_scale(counted.raw_bytes, counted.missed_bits)
    return {
        "compressor": compressor,
        "dataset": source.name,
        "chunking": chunking,
        "chunk_size": config.chunk_size,
        "num_chunks": counted.num_chunks,
        "raw_bytes": counted.raw_bytes,
        "compressed_bytes": compressed,
        **rates(compressed, counted.raw_bytes, params),
        "params": params,
        "seconds": seconds,
        "mb_per_s": counted.raw_bytes / 1e6 / seconds if seconds > 0 else None,
        "seven_bit": mode,
        "missed_bits": counted.missed_bits,
    }


def _seven_bit(config, source, compressor: str) -> str:
    if compressor.startswith(compressors.LM_PREFIX) or config.seven_bit_all:
        return compressors.seven_bit_mode(config.seven_bit, source.modality)
    return "none"


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


def _evaluate_classical(config, source: sources.Source, names: list[str]) -> list[dict]:
    """Chunked (worker processes) and unchunked (streams) rates of classical compressors."""
    if config.chunking not in CHUNKINGS:
        raise ValueError(f"chunking must be one of {CHUNKINGS}, got {config.chunking!r}.")
    chunked = config.chunking in ("chunked", "both")
    unchunked = config.chunking in ("unchunked", "both")
    workers = config.workers or os.cpu_count() or 1
    mode = _seven_bit(config, source, names[0])
    counted = _Counted(source.chunks(config.num_chunks, config.chunk_size), mode)
    totals = {name: [0, 0.0] for name in names}
    streams = [_StreamThread(name) for name in names] if unchunked else []
    bar = _Progress(config.progress, _expected_bytes(config, source), "classical")
    pool = _pool(workers) if chunked else None
    pending: collections.deque = collections.deque()

    def collect():
        future, num_bytes = pending.popleft()
        for name, (size, seconds) in future.result().items():
            totals[name][0] += size
            totals[name][1] += seconds
        bar.update(num_bytes)

    try:
        blocks = _batched(sources.prefetch(iter(counted)), config.block_chunks)
        for block in blocks:
            num_bytes = sum(map(len, block))
            if pool is not None:
                future = pool.submit(classical.compress_chunks, tuple(names), block)
                pending.append((future, num_bytes))
                while len(pending) > 2 * workers:
                    collect()
            else:
                bar.update(num_bytes)
            if streams:
                joined = b"".join(block)
                for stream in streams:
                    stream.write(joined)
        while pending:
            collect()
        stream_bytes = {s.name: (s.close(), s.seconds) for s in streams}
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if counted.num_chunks == 0:
        raise ValueError(f"{source.name} yielded no chunks.")

    records = []
    for name in names:
        if chunked:
            header = classical.header_bytes(name)
            size = totals[name][0] - header * (counted.num_chunks - 1)
            record = _record(config, source, name, "chunked", counted, size, 0, totals[name][1])
            records.append({**record, "header_bytes": header})
        if unchunked:
            size, seconds = stream_bytes[name]
            records.append(_record(config, source, name, "unchunked", counted, size, 0, seconds))
    return records


def _pool(workers: int) -> concurrent.futures.Executor:
    """Worker processes for chunked compression; one worker runs in a thread of this process."""
    if workers == 1:
        return concurrent.futures.ThreadPoolExecutor(1)
    # Not fork: this process may run JAX's threads, which a fork would copy mid-flight. Workers
    # start from a clean process instead, and import the main module again (this one imports
    # JAX lazily for that reason).
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)


def _batched(items, size: int) -> Iterator[list]:
    iterator = iter(items)
    while block := list(itertools.islice(iterator, max(1, size))):
        yield block


def _host_chunks(config, source: sources.Source) -> Iterator[bytes]:
    """This host's share of the chunks: every process_count-th, from its index."""
    chunks = source.chunks(config.num_chunks, config.chunk_size)
    index, count = _hosts()
    if count > 1:
        chunks = itertools.islice(chunks, index, None, count)
    return chunks


def _sum_over_hosts(values: list[float]) -> list[float]:
    num_hosts = _hosts()[1]
    if num_hosts == 1:
        return values
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray(values, np.float64))
    return list(np.asarray(gathered).reshape(num_hosts, -1).sum(0))


def _hosts() -> tuple[int, int]:
    """(this host's index, number of hosts).

    JAX is imported here rather than at the top: the worker processes of the classical
    compressors import this module again, and start faster without it.
    """
    import jax

    return jax.process_index(), jax.process_count()


def _evaluate_lm(config, source: sources.Source, entry: str) -> dict:
    """Rates one model by its log-loss and/or its coded bytes (see the module docstring)."""
    if not (config.lm.log_loss or config.lm.coded):
        raise ValueError("Set --config.lm.log_loss or --config.lm.coded (or both).")
    workdir = entry[len(compressors.LM_PREFIX) :]
    lm = compressors.COMPRESSORS["lm"](
        workdir,
        step=None if config.lm.step < 0 else config.lm.step,
        chunks_per_device=config.lm.chunks_per_device,
        lanes=config.lm.lanes,
        dtype=config.lm.dtype,
        attention=config.lm.attention,
        attention_blocks=config.lm.attention_blocks,
    )
    mode = _seven_bit(config, source, entry)
    total = _expected_bytes(config, source)
    num_hosts = _hosts()[1]
    if total and num_hosts > 1:
        total //= num_hosts
    stats, counted = {}, None

    def run(label, fn):
        nonlocal counted
        counted = _Counted(_host_chunks(config, source), mode)
        bar = _Progress(config.progress, total, f"{entry} {label}")
        start = time.perf_counter()
        try:
            result = fn(counted, bar.update)
        finally:
            bar.close()
        stats[f"{label}_seconds"] = time.perf_counter() - start
        return result

    ideal_bits = coded_bytes = float("nan")
    if config.lm.log_loss:
        chunk_bits = run(
            "log_loss", lambda c, p: lm.log_loss(c, config.chunk_size, p, config.lm.prefetch)
        )
        ideal_bits = float(chunk_bits.sum())
    if config.lm.coded:
        sizes, _ = run(
            "coded",
            lambda c, p: lm.code(c, config.chunk_size, config.lm.verify, p, config.lm.prefetch),
        )
        coded_bytes = int(sizes.sum())
    num_chunks, raw_bytes, missed_bits, ideal_bits, coded_bytes = _sum_over_hosts(
        [counted.num_chunks, counted.raw_bytes, counted.missed_bits, ideal_bits, coded_bytes]
    )
    counted.num_chunks, counted.raw_bytes = int(num_chunks), int(raw_bytes)
    counted.missed_bits = int(missed_bits)
    coded_bytes = int(coded_bytes) if config.lm.coded else None
    if counted.num_chunks == 0:
        raise ValueError(f"{source.name} yielded no chunks.")
    wall = sum(stats.values())  # this host's; hosts run side by side
    compressed = coded_bytes if config.lm.coded else ideal_bits / 8
    record = _record(config, source, entry, "chunked", counted, compressed, lm.num_params, wall)
    scale = compressors.seven_bit_scale(counted.raw_bytes, counted.missed_bits)
    scale = scale if counted.missed_bits else 1  # keeps byte counts integers
    log_loss_bytes = ideal_bits / 8 * scale
    record.update(
        rate_from="coded" if config.lm.coded else "log_loss",
        coded_bytes=coded_bytes * scale if config.lm.coded else None,
        log_loss_bytes=log_loss_bytes if config.lm.log_loss else None,
        log_loss_rate=log_loss_bytes / counted.raw_bytes if config.lm.log_loss else None,
        verified=bool(config.lm.coded and config.lm.verify),
        lm_workdir=workdir,
        lm_size=lm.size,
        lm_step=lm.step,
        devices=len(lm.devices) * num_hosts,
        **stats,
    )
    return record


def _merge_results(workdir: pathlib.Path, records: list[dict]) -> list[dict]:
    """Previous records in workdir, those with the same key replaced by `records`, in order."""
    path = workdir / RESULTS_JSONL
    old = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    new_keys = {tuple(r.get(k) for k in _KEY) for r in records}
    return [r for r in old if tuple(r.get(k) for k in _KEY) not in new_keys] + records


def _write_results(workdir: pathlib.Path, records: list[dict]) -> None:
    with open(workdir / RESULTS_JSONL, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    fields = list(dict.fromkeys(k for r in records for k in r))
    with open(workdir / RESULTS_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(records)


def format_table(records: list[dict]) -> str:
    """The records as the paper's Table 1: raw then adjusted rates (%), datasets as columns."""
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    rows: dict[tuple, dict] = {}
    for r in sorted(records, key=lambda r: r["chunking"] == "chunked"):  # unchunked first
        chunk = "inf" if r["chunking"] == "unchunked" else str(r["chunk_size"])
        mode = r.get("seven_bit", "none")
        label = _short(r["compressor"]) + ("" if mode == "none" else f" ({mode} 7-bit)")
        rows.setdefault((chunk, label), {})[r["dataset"]] = r
    widths = [max(6, len(_short(d))) for d in datasets]
    name_width = max(10, *(len(label) for _, label in rows))
    cols = " ".join(f"{_short(d):>{w}}" for d, w in zip(datasets, widths, strict=True))
    span = max(len(cols), len("adjusted rate (%)"))
    lines = [
        f"{'':{5 + name_width + 14}}  {'raw rate (%)':>{span}}  {'adjusted rate (%)':>{span}}",
        f"{'chunk':>5} {'compressor':<{name_width}} {'params':>12}  {cols:>{span}}  {cols:>{span}}",
    ]
    for (chunk, label), by_dataset in rows.items():
        params = next(iter(by_dataset.values()))["params"]
        cells = {
            key: " ".join(
                f"{100 * by_dataset[d][key]:>{w}.1f}" if d in by_dataset else f"{'-':>{w}}"
                for d, w in zip(datasets, widths, strict=True)
            )
            for key in ("raw_rate", "adjusted_rate")
        }
        lines.append(
            f"{chunk:>5} {label:<{name_width}} {params:>12,}  "
            f"{cells['raw_rate']:>{span}}  {cells['adjusted_rate']:>{span}}"
        )
    for r in records:
        if r.get("log_loss_rate") is not None:
            coded = r.get("coded_bytes")
            lines.append(
                f"{_short(r['compressor'])} on {_short(r['dataset'])}: "
                + (f"coded {8 * coded / r['raw_bytes']:.4f} bits/byte, " if coded else "")
                + f"log-loss {8 * r['log_loss_rate']:.4f} bits/byte"
                + (", every chunk decoded back and verified" if r.get("verified") else "")
            )
    return "\n".join(lines)


def _short(spec: str) -> str:
    """'NAME:/a/b/c' -> 'NAME:c', to keep the table narrow (the records keep the full spec)."""
    name, sep, arg = spec.partition(":")
    return f"{name}:{pathlib.PurePath(arg).name or arg}" if sep and "/" in arg else spec


def evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Rates every compressor of `config` on its dataset and records the results in `workdir`.

    With more than one worker, classical compressors run in worker processes that import the
    main module again: a script calling this needs the usual `if __name__ == "__main__":` guard.

    Args:
      config: from configs/eval.py.
      workdir: output directory; results.jsonl and results.csv are updated there (host 0).

    Returns:
      This run's records (see the module docstring), classical ones first.

    Raises:
      ValueError: bad config, unknown or missing dataset or compressor (sources.SourceError and
        corpus.CorpusError are ValueErrors); the dataset yields no chunks.
      compressors.language_model.VerificationError: with lm.verify, a chunk failed to decode.
    """
    if config.distributed:
        import jax

        jax.distributed.initialize()
    names = compressors.parse_names(config.compressors)
    options = sources.SourceOptions(
        path=config.data.path,
        cache_dir=config.data.cache_dir,
        tfds_data_dir=config.data.tfds_data_dir,
        manual_dir=config.data.manual_dir,
        tfds_download=config.data.tfds_download,
        seed=config.seed,
    )
    source = sources.get_source(config.dataset, options)
    compressors.seven_bit_mode(config.seven_bit, source.modality)  # fail early on a bad mode
    classical_names = [n for n in names if not n.startswith(compressors.LM_PREFIX)]
    records = []
    is_first_host = _hosts()[0] == 0
    if classical_names and is_first_host:
        records += _evaluate_classical(config, source, classical_names)
    for entry in names:
        if entry.startswith(compressors.LM_PREFIX):
            records.append(_evaluate_lm(config, source, entry))
    if is_first_host:
        workdir = pathlib.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        _write_results(workdir, _merge_results(workdir, records))
    return records


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("Too many command-line arguments.")
    workdir = flags.FLAGS.workdir
    if workdir is None:
        raise app.UsageError("--workdir is required.")
    logging.set_verbosity(logging.ERROR)  # orbax logs restores at INFO and WARNING
    evaluate(flags.FLAGS.config, workdir)
    if _hosts()[0] == 0:
        path = pathlib.Path(workdir) / RESULTS_JSONL
        print(format_table([json.loads(line) for line in path.read_text().splitlines()]))
        print(f"Records: {path} and {path.with_name(RESULTS_CSV)}")


if __name__ == "__main__":
    from ml_collections import config_flags

    # Defined here rather than at import, so tests can import this module beside train.py.
    config_flags.DEFINE_config_file("config", "configs/eval.py", "Evaluation config.")
    flags.DEFINE_string("workdir", None, "Output directory for results.jsonl / results.csv.")
    app.run(main)
