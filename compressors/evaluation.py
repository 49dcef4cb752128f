"""The evaluator behind eval_compress.py: rates compressors and models on one dataset (Table 1).

`evaluate(config, workdir)` takes a configs/eval.py config, rates every compressor it names on
its dataset and keeps the records in WORKDIR/results.jsonl and results.csv; eval_compress.py
documents the records, the accounting and when a record is reused, and prints the table.

Classical compressors run in worker processes (`compressors.pool`), models on the local devices
through their compressor class (`compressors.model_compressor`: `LanguageModelCompressor` for
`lm:RUN_DIR`, `PretrainedCompressor` for `hf:PATH`), which also gives what differs between kinds:
the entry's options from the config (`options`), its checks before any work (`check`), the
fields that say what a record rates (`identity`), the counts summed over hosts (`COUNTS`) and
its own fields of a record (`record_fields`). Nothing here asks which kind of model it holds.

This module imports no JAX at its top (nor `compressors.model_names`, which does): the worker
processes of the classical compressors import the main module, and with it this one, again.
"""

import contextlib
import datetime
import functools
import hashlib
import itertools
import json
import os
import pathlib
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import ml_collections
import numpy as np
from tqdm import tqdm

import compressors
import runs
from compressors import classical, pool
from data import sources
from training import checks

RESULTS_JSONL = "results.jsonl"
RESULTS_CSV = "results.csv"
BYTES_PER_PARAM = 2  # the paper's adjusted rate charges each parameter as 2 bytes
CHUNKINGS = ("chunked", "unchunked", "both")
DTYPES = ("", "float32", "bfloat16")  # config.dtype: '' keeps the model's own
_LM_SUMS = ("num_chunks", "raw_bytes", "missed_bits", "ideal_bits", "coded_bytes")
_KEY = ("compressor", "dataset", "chunking", "chunk_size", "num_chunks", "seven_bit", "top_k")
# Fields a config no longer has, set by a user: each fails naming its replacement.
_MOVED = {"lm.dtype": "dtype", "hf.dtype": "dtype"}


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


def check_config(config: ml_collections.ConfigDict) -> None:
    """Fails with one line on a field out of its range (`training.checks`), a field that moved
    (`--config.lm.dtype is now --config.dtype`) or an unknown dtype.

    Raises:
      ValueError: names the field.
    """
    for old, new in _MOVED.items():
        section, field = old.split(".")
        if config[section][field] is not None:
            raise ValueError(
                f"--config.{old} is now --config.{new} (one compute dtype for every model; "
                "'' keeps the model's own)."
            )
    checks.check(config)
    if config.dtype not in DTYPES:
        raise ValueError(
            f"--config.dtype={config.dtype!r}: give float32 or bfloat16 ('' keeps the model's)."
        )


def _is_model(name: str) -> bool:
    from compressors import model_names  # imports JAX (see the module docstring)

    return model_names.is_model(name)


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


def _record(
    config, source, compressor, chunking, counted: _Counted, compressed, num_params, seconds
):
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
        **rates(compressed, counted.raw_bytes, num_params),
        "num_params": num_params,
        "seconds": seconds,
        "mb_per_s": counted.raw_bytes / 1e6 / seconds if seconds > 0 else None,
        "modality": source.modality,
        "seven_bit": mode,
        "missed_bits": counted.missed_bits,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _seven_bit(config, source, compressor: str) -> str:
    if _is_model(compressor) or config.seven_bit_all:
        return compressors.seven_bit_mode(config.seven_bit, source.modality)
    return "none"


def _progress(config, total: int | None, desc: str) -> tqdm:
    """A bar over bytes (MB/s), on host 0 only and when enabled."""
    enabled = config.progress and hosts()[0] == 0
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False, disable=not enabled)


def _evaluate_classical(config, source: sources.Source, names: list[str]) -> list[dict]:
    """Chunked and/or unchunked rates of classical compressors (`compressors.pool`)."""
    chunkings = _classical_chunkings(config)
    mode = _seven_bit(config, source, names[0])
    counted = _Counted(source.chunks(config.num_chunks, config.chunk_size), mode)
    with _progress(config, _expected_bytes(config, source), "classical") as bar:
        sizes = pool.compress_sizes(
            sources.prefetch(iter(counted)),
            names,
            chunked="chunked" in chunkings,
            unchunked="unchunked" in chunkings,
            workers=config.workers,
            block_chunks=config.block_chunks,
            progress=bar.update,
        )
    if counted.num_chunks == 0:
        raise ValueError(f"{source.name} yielded no chunks.")
    return _classical_records(config, source, names, counted, sizes)


def _classical_chunkings(config) -> list[str]:
    """The chunkings config.chunking asks of classical compressors.

    Raises:
      ValueError: an unknown chunking.
    """
    if config.chunking not in CHUNKINGS:
        raise ValueError(f"chunking must be one of {CHUNKINGS}, got {config.chunking!r}.")
    return ["chunked", "unchunked"] if config.chunking == "both" else [config.chunking]


def _classical_records(config, source, names, counted, sizes: dict) -> list[dict]:
    """The records of classical compressors from their summed sizes (`pool.compress_sizes`:
    name -> {chunking: (bytes, seconds)}) over `counted`'s chunks. Chunked, the container is
    counted once: one compressed empty stream's header is taken off for every chunk but the
    first (`classical.header_bytes`)."""
    records = []
    for name in names:
        if "chunked" in sizes[name]:
            header = classical.header_bytes(name)
            size, seconds = sizes[name]["chunked"]
            size -= header * (counted.num_chunks - 1)  # the container counted once
            record = _record(config, source, name, "chunked", counted, size, 0, seconds)
            records.append({**record, "header_bytes": header})
        if "unchunked" in sizes[name]:
            size, seconds = sizes[name]["unchunked"]
            records.append(_record(config, source, name, "unchunked", counted, size, 0, seconds))
    return records


def _host_chunks(config, source: sources.Source) -> Iterator[bytes]:
    """This host's share of the chunks: every process_count-th, from its index."""
    chunks = source.chunks(config.num_chunks, config.chunk_size)
    index, count = hosts()
    if count > 1:
        chunks = itertools.islice(chunks, index, None, count)
    return chunks


def _sum_over_hosts(values: list[float]) -> list[float]:
    num_hosts = hosts()[1]
    if num_hosts == 1:
        return values
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray(values, np.float64))
    return list(np.asarray(gathered).reshape(num_hosts, -1).sum(0))


def hosts() -> tuple[int, int]:
    """(this host's index, number of hosts).

    JAX is imported here rather than at the top: the worker processes of the classical
    compressors import this module again, and start faster without it.
    """
    import jax

    return jax.process_index(), jax.process_count()


def _whole_stream(entry: str) -> bool:
    """Whether a model codes the dataset as one stream (`online:`), not chunk by chunk."""
    return getattr(compressors.model_compressor(entry), "CHUNKING", "chunked") == "unchunked"


def _model(config, entry: str):
    """The compressor of a model entry (`lm:RUN_DIR` or `hf:PATH`), built with the options its
    class reads from `config` (through `compressors.COMPRESSORS`)."""
    from compressors import model_names

    cls = compressors.model_compressor(entry)
    return compressors.COMPRESSORS[cls.NAME](model_names.parse(entry)[1], **cls.options(config))


def _evaluate_lm(config, source: sources.Source, entry: str, lm=None) -> dict:
    """Rates one model (`lm:` or `hf:`) by its log-loss and/or its coded bytes (see
    eval_compress.py); `lm` is its compressor when already built (`_model`)."""
    lm = _model(config, entry) if lm is None else lm
    mode = _seven_bit(config, source, entry)
    total = _expected_bytes(config, source)
    num_hosts = hosts()[1]
    if total and num_hosts > 1:
        total //= num_hosts
    counted = []

    def chunks():
        counted.append(_Counted(_host_chunks(config, source), mode))
        return counted[-1]

    stats = lm.rate(
        chunks,
        config.chunk_size,
        log_loss=config.lm.log_loss,
        coded=config.lm.coded,
        verify=config.lm.verify,
        progress=lambda label: _progress(config, total, f"{entry} {label}"),
        prefetch=config.lm.prefetch,
    )
    sums = _sums_over_hosts(_lm_sums(config, lm, stats, counted[-1]))
    if sums["num_chunks"] == 0:
        raise ValueError(f"{source.name} yielded no chunks.")
    fields = lm.record_fields(sums["counts"], config.lm.coded)
    devices = len(lm.devices) * num_hosts
    chunking = getattr(lm, "CHUNKING", "chunked")
    return _lm_record(config, source, entry, sums, lm.num_params, devices, fields, chunking)


def _lm_sums(config, lm, stats: dict, counted) -> dict:
    """What a model's record is made of, summed over its chunks (this host's): chunks, raw
    bytes, missed bits, ideal bits (NaN without the log-loss pass), coded bytes (NaN without
    the coded pass), its class's `COUNTS` and each pass's seconds."""
    return {
        "num_chunks": counted.num_chunks,
        "raw_bytes": counted.raw_bytes,
        "missed_bits": counted.missed_bits,
        "ideal_bits": stats["ideal_bits"],
        "coded_bytes": stats["coded_bytes"] if config.lm.coded else float("nan"),
        "counts": {k: stats.get(k, 0) for k in lm.COUNTS},
        "seconds": {k: v for k, v in stats.items() if k.endswith("_seconds")},
    }


def _sums_over_hosts(sums: dict) -> dict:
    """`_lm_sums` summed over the hosts (each rated its own chunks); seconds stay this host's."""
    if hosts()[1] == 1:
        return sums
    names = list(sums["counts"])
    values = _sum_over_hosts([sums[k] for k in _LM_SUMS] + [sums["counts"][k] for k in names])
    out = dict(zip(_LM_SUMS, values[: len(_LM_SUMS)], strict=True))
    for key in ("num_chunks", "raw_bytes", "missed_bits"):
        out[key] = int(out[key])
    counts = dict(zip(names, values[len(_LM_SUMS) :], strict=True))
    return {**out, "counts": counts, "seconds": sums["seconds"]}


def _lm_record(
    config, source, entry, sums: dict, num_params: int, devices: int, fields, chunking="chunked"
) -> dict:
    """A model's record from its sums (`_lm_sums`, over every chunk rated) and its class's
    `record_fields` of them; `chunking` 'unchunked' for a model that codes the dataset as one
    stream (`online:`)."""
    last = types.SimpleNamespace(
        num_chunks=sums["num_chunks"], raw_bytes=sums["raw_bytes"], missed_bits=sums["missed_bits"]
    )
    ideal_bits, coded_bytes = sums["ideal_bits"], sums["coded_bytes"]
    seconds = sums["seconds"]
    wall = sum(seconds.values())  # this host's; hosts run side by side
    compressed = int(coded_bytes) if config.lm.coded else ideal_bits / 8
    record = _record(config, source, entry, chunking, last, compressed, num_params, wall)
    scale = compressors.seven_bit_scale(last.raw_bytes, last.missed_bits)
    scale = scale if last.missed_bits else 1  # keeps byte counts integers
    log_loss_bytes = ideal_bits / 8 * scale
    record.update(
        rate_from="coded" if config.lm.coded else "log_loss",
        coded_bytes=int(coded_bytes) * scale if config.lm.coded else None,
        log_loss_bytes=log_loss_bytes if config.lm.log_loss else None,
        log_loss_rate=log_loss_bytes / last.raw_bytes if config.lm.log_loss else None,
        verified=bool(config.lm.coded and config.lm.verify),
        devices=devices,
        **seconds,
    )
    record.update(fields)
    return record


def _key(record: dict) -> tuple:
    return tuple(record.get(k) for k in _KEY)


def _dataset_fields(config) -> dict:
    """What names the data beyond the source's name: a `file:` source's content, the files
    behind `images:PATH` and `audio:PATH` (names, sizes and modification times: a directory of
    LibriSpeech is too large to hash on every run) and the `random` source's seed."""
    name, _, arg = config.dataset.partition(":")
    fields = {}
    if name == "file":
        digest = hashlib.sha256()
        with open(pathlib.Path(arg).expanduser(), "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
        fields["dataset_sha256"] = digest.hexdigest()
    elif name in ("images", "audio") and arg:
        fields["dataset_files"] = _files_fingerprint(pathlib.Path(arg).expanduser())
    elif name == "random":
        fields["seed"] = int(arg) if arg else config.seed
    return fields


def _files_fingerprint(path: pathlib.Path) -> str:
    """sha256 of the relative name, size and modification time of `path` or every file under it."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        st = file.stat()
        name = file.name if file == path else str(file.relative_to(path))
        digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _identity(
    config, source: sources.Source, compressor: str, dataset: dict, load: Callable | None = None
) -> dict:
    """The fields that say what a record of `compressor` rates: the data (`dataset`, from
    `_dataset_fields`), and for a model its checkpoint's fingerprint (`compressors.fingerprints`,
    as compress.py's streams name it) and every setting that changes its figures, resolved
    (the dtype and lanes a default stands for). A record is reused only when all of these equal
    this run's (`_have`).

    Args:
      load: a model entry's compressor, built on first call; its class's `identity` calls it
        only when it needs the parameters (a run's; an `hf:` checkpoint is fingerprinted from
        its files, without loading it).
    """
    fields = {
        "compressor": compressor,
        "dataset": source.name,
        "chunk_size": config.chunk_size,
        "seven_bit": _seven_bit(config, source, compressor),
        "modality": source.modality,
        **dataset,
    }
    if not _is_model(compressor):
        return fields
    c = config.lm
    fields["passes"] = "+".join(p for p, on in (("log_loss", c.log_loss), ("coded", c.coded)) if on)
    load = load or functools.cache(functools.partial(_model, config, compressor))
    fields.update(compressors.model_compressor(compressor).identity(config, compressor, load))
    return fields


def _save(workdir: pathlib.Path, records: list[dict]) -> None:
    """Merges `records` into workdir's results (same key: replaced), atomically."""
    new_keys = {_key(r) for r in records}
    old = runs.read_jsonl(workdir / RESULTS_JSONL)
    merged = [r for r in old if _key(r) not in new_keys] + records
    runs.write_atomic(workdir / RESULTS_JSONL, "".join(json.dumps(r) + "\n" for r in merged))
    runs.write_csv(workdir / RESULTS_CSV, merged)


def _check_models(config, names: list[str]) -> None:
    """Fails before any work when a model cannot rate this config's chunks, or a pretrained
    model's directory lacks what it needs (its config, weights index or tokenizer)."""
    for entry in names:
        if _is_model(entry):
            compressors.model_compressor(entry).check(config, entry)


def prepare(
    config: ml_collections.ConfigDict, split: bool = False
) -> tuple[list[str], sources.Source]:
    """Every check `evaluate` makes before any work: the config's fields, the compressors'
    names, the models (`_check_models`: chunk size against the context, a checkpoint's files),
    the dataset and the 7-bit mode. Loads no model. `split`: the chunks are shared out (shards);
    so are they over several hosts.

    Returns:
      The compressors' names and the dataset's source.

    Raises:
      ValueError: the first problem, in one line.
    """
    check_config(config)
    names = compressors.parse_names(config.compressors)
    _check_models(config, names)
    whole = [n for n in names if _is_model(n) and _whole_stream(n)]
    if whole and (split or config.distributed):
        raise ValueError(
            f"{whole[0]} codes the whole dataset as one stream, which is not shared out: rate "
            "it in a run of its own, without --shard or --config.distributed."
        )
    if any(not _is_model(n) for n in names):
        _classical_chunkings(config)
    options = sources.SourceOptions(
        path=config.data.path,
        cache_dir=config.data.cache_dir,
        tfds_data_dir=config.data.tfds_data_dir,
        manual_dir=config.data.manual_dir,
        tfds_download=config.data.tfds_download,
        seed=config.seed,
        modality=config.data.modality if config.dataset.startswith("file:") else "auto",
    )
    source = sources.get_source(config.dataset, options)
    compressors.seven_bit_mode(config.seven_bit, source.modality)  # fail early on a bad mode
    return names, source


def evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Rates every compressor of `config` on its dataset and records the results in `workdir`.

    Each compressor's records are saved as soon as they are done, so a later failure or Ctrl-C
    keeps them. A compressor whose records in `workdir` are of the same data, model and
    settings (`_identity`) is not rated again unless `config.overwrite`; standard error says how
    many records were reused and when they were made, and what changed for a record rated again.

    With more than one worker, classical compressors run in worker processes that import the
    main module again: a script calling this needs the usual `if __name__ == "__main__":` guard.

    Args:
      config: from configs/eval.py.
      workdir: output directory; results.jsonl and results.csv are updated there (host 0).

    Returns:
      This run's records (see eval_compress.py), classical ones first; records that were
      already there and skipped are returned too.

    Raises:
      ValueError: bad config, unknown or missing dataset or compressor (sources.SourceError and
        corpus.CorpusError are ValueErrors), a model whose context is shorter than the chunks;
        the dataset yields no chunks.
      compressors.language_model.VerificationError: with lm.verify, a chunk failed to decode.
    """
    if config.distributed:
        from training import runtime

        runtime.initialize_distributed()
    names, source = prepare(config)
    workdir = pathlib.Path(workdir)
    is_first_host = hosts()[0] == 0
    done = [] if config.overwrite else runs.read_jsonl(workdir / RESULTS_JSONL)
    dataset = _dataset_fields(config)
    records, reused = [], []

    def keep(new: list[dict], identities: dict[str, dict]) -> None:
        for record in new:
            identity = identities[record["compressor"]]
            record.update({k: v for k, v in identity.items() if v is not None})
        records.extend(new)
        if is_first_host and new:
            workdir.mkdir(parents=True, exist_ok=True)
            _save(workdir, new)

    classical = {n: _identity(config, source, n, dataset) for n in names if not _is_model(n)}
    have = {n: _have(done, config, identity) for n, identity in classical.items()}
    todo = [n for n in classical if not have[n]]
    reused += [r for n in classical for r in have[n]]
    records += reused
    if todo and is_first_host:
        _note_stale(done, config, [classical[n] for n in todo])
        keep(_evaluate_classical(config, source, todo), classical)
    for entry in names:
        if not _is_model(entry):
            continue
        # Built at most once, for the identity (a run's parameters are fingerprinted) and the
        # rating; a model whose identity needs no loading is loaded only to be rated.
        load = functools.cache(functools.partial(_model, config, entry))
        identity = _identity(config, source, entry, dataset, load)
        have = _have(done, config, identity)
        if have:
            reused += have
            records += have
            continue
        if is_first_host:
            _note_stale(done, config, [identity])
        keep([_evaluate_lm(config, source, entry, load())], {entry: identity})
    if reused and is_first_host:
        print(_reused_note(reused, workdir / RESULTS_JSONL), file=sys.stderr)
    return records


def _have(done: list[dict], config, identity: dict) -> list[dict]:
    """The records of `identity`'s compressor for this config already in the results, if every
    chunking asked for is there, each of the same data, model and settings (`_identity`), and
    verified where verification is asked for."""
    compressor = identity["compressor"]
    is_model = _is_model(compressor)
    chunkings = ["unchunked" if is_model and _whole_stream(compressor) else "chunked"]
    if not is_model and config.chunking != "chunked":
        chunkings = ["chunked", "unchunked"] if config.chunking == "both" else ["unchunked"]
    verify = is_model and config.lm.coded and config.lm.verify
    found = [
        r
        for r in done
        if r["chunking"] in chunkings
        and all(r.get(k) == v for k, v in identity.items())
        and (not config.num_chunks or r["num_chunks"] == config.num_chunks)
        and (r.get("verified") or not verify)
    ]
    return found if len({r["chunking"] for r in found}) == len(chunkings) else []


def _note_stale(done: list[dict], config, identities: list[dict]) -> None:
    """Says which records are rated again because what they rated changed (another checkpoint,
    other data, other settings), naming the fields that differ."""
    row = ("compressor", "dataset", "chunk_size", "seven_bit", "top_k")
    for identity in identities:
        for r in done:
            if any(r.get(k) != identity.get(k) for k in row) or (
                config.num_chunks and r["num_chunks"] != config.num_chunks
            ):
                continue
            short = lambda v: v[:12] if isinstance(v, str) and len(v) == 64 else v  # noqa: E731
            changed = [
                f"{k} ({short(r.get(k))} -> {short(v)})"
                for k, v in identity.items()
                if r.get(k) != v
            ]
            if changed:
                print(
                    f"{identity['compressor']} on {identity['dataset']}: rating again, the record "
                    f"made {r.get('created', 'before records were dated')} differs in "
                    f"{', '.join(changed)}.",
                    file=sys.stderr,
                )
                break


def _reused_note(reused: list[dict], path: pathlib.Path) -> str:
    """One line: how many records were reused and when they were made."""
    times = sorted({r["created"] for r in reused if r.get("created")})
    undated = sum(not r.get("created") for r in reused)
    when = [f"made {times[0]}" + (f" to {times[-1]}" if len(times) > 1 else "")] if times else []
    when += [f"{undated} made before records were dated"] if undated else []
    return (
        f"Reused {len(reused)} record{'s' if len(reused) > 1 else ''} of {path} "
        f"({'; '.join(when)}): same data, models and settings. "
        "--config.overwrite=True rates them again."
    )


# Sharded evaluation (eval_compress.py --shard=I/N; compressors/shards.py submits, watches and
# gathers the shards). Shard I of N rates every N-th chunk of the dataset from the I-th
# (`num_chunks` applies first), in groups of `config.shard_group` chunks; after each group its
# sums and the index reached are saved atomically to PROGRESS_FILE, per entry (the classical
# compressors' chunked pass, their unchunked stream, each model), each under the key it was
# made with (`_entry_key`: the identities of its compressors and the chunk count asked for).
# A shard run again resumes every entry whose key is unchanged from the group it reached; a
# changed key (another checkpoint, other data or settings) starts that entry afresh.

SHARDS_DIR = "shards"
PROGRESS_FILE = "progress.json"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class ShardStopped(BaseException):
    """A shard stopped on SIGTERM or SIGUSR1 with its progress saved; the same command resumes.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows the stop;
    eval_compress.py exits with `exit_status`, on which a Slurm array task is requeued.
    """

    exit_status = 75  # cluster.slurm.PREEMPTED_EXIT_CODE (os.EX_TEMPFAIL)


def shard_dir(workdir: str | os.PathLike, index: int, count: int) -> pathlib.Path:
    """WORKDIR/shards/I-of-N: shard I's results.jsonl, progress.json and Slurm logs."""
    return pathlib.Path(workdir) / SHARDS_DIR / f"{index}-of-{count}"


def shard_entries(config, names: list[str], index: int) -> list[tuple[str, list[str], str]]:
    """(entry, compressors, chunking) of what shard `index` rates: the classical compressors'
    chunked pass (every shard), their unchunked stream (shard 0 only: one stream over the whole
    dataset), then each model."""
    plain = [n for n in names if not _is_model(n)]
    entries = []
    if plain:
        for chunking in _classical_chunkings(config):
            if chunking == "chunked" or index == 0:
                entries.append((f"classical {chunking}", plain, chunking))
    entries += [(n, [n], "chunked") for n in names if _is_model(n)]
    return entries


def read_progress(directory: pathlib.Path) -> dict:
    """A shard's saved progress ({'entries': {}} before its first group).

    Raises:
      ValueError: the file is not JSON (written by something else).
    """
    path = pathlib.Path(directory) / PROGRESS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {"entries": {}}
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} is not a shard's progress ({e}): remove it to start over."
        ) from None


class _Signals:
    """While entered, SIGTERM and SIGUSR1 are noted instead of ending the process."""

    def __init__(self):
        self.received: str | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._old[number] = signal.signal(number, self._note)
        return self

    def __exit__(self, *exc_info):
        for number, handler in self._old.items():
            signal.signal(number, handler)

    def _note(self, number, frame):
        self.received = signal.Signals(number).name

    @contextlib.contextmanager
    def blocked(self):
        """Holds both signals back from this thread while worker processes start: they inherit
        the block (a signal to the job step reaches them too) and are not killed by it; this
        process takes the signal when the block ends."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _Bar:
    """The `progress(label)` of `RatedModel.rate` over a shard's groups: one bar, and a stop
    between two coder groups once a signal came (single host: the others would wait)."""

    def __init__(self, bar: tqdm, shard: "_Shard"):
        self._bar, self._shard = bar, shard

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def update(self, num_bytes: int) -> None:
        self._bar.update(num_bytes)
        if hosts()[1] == 1:
            self._shard.stop_if_signalled()


class _Shard:
    """Rates one shard's entries group by group, saving progress after each (host 0)."""

    def __init__(self, config, source, workdir, index: int, count: int, signals: _Signals):
        self.config, self.source, self.index, self.count = config, source, index, count
        self.directory = shard_dir(workdir, index, count)
        self.signals = signals
        self.first_host = hosts()[0] == 0
        self.state = {"entries": {}} if config.overwrite else read_progress(self.directory)
        total = config.num_chunks or source.default_num_chunks
        self.state.update(
            shard=index,
            shards=count,
            expected_chunks=len(range(index, total, count)) if total else None,
        )
        self.current = ""

    def stop_if_signalled(self) -> None:
        received = self.signals.received
        if hosts()[1] > 1:  # every host stops after the same group
            received = "a signal" if _sum_over_hosts([float(bool(received))])[0] else None
        if received:
            entry = self.state["entries"].get(self.current, {})
            raise ShardStopped(
                f"shard {self.index}-of-{self.count} stopped on {received}, {self.current} "
                f"after {entry.get('next', 0)} of its chunks, with its progress saved in "
                f"{self.directory / PROGRESS_FILE}: the same command resumes it."
            )

    def entry(self, name: str, key: dict) -> dict:
        """The entry's saved progress if it was made under `key`, else a fresh one."""
        key = json.loads(json.dumps(key))  # as it reads back
        self.current = name
        entry = self.state["entries"].get(name)
        if entry is not None and entry["key"] != key:
            if self.first_host:
                changed = ", ".join(changed_paths(entry["key"], key)) or "its key"
                print(
                    f"{name}: shard {self.index}-of-{self.count} starts it again: its saved "
                    f"progress ({entry['next']} chunks) differs in {changed}.",
                    file=sys.stderr,
                )
            entry = None
        if entry is None:
            entry = {"key": key, "next": 0, "done": False, "sums": None, "records": []}
            self.state["entries"][name] = entry
            self.save()
        return entry

    def save(self) -> None:
        """Writes progress.json and results.jsonl (the records of the finished entries)."""
        if not self.first_host:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.state["updated"] = time.time()
        records = [r for e in self.state["entries"].values() if e["done"] for r in e["records"]]
        runs.write_atomic(
            self.directory / RESULTS_JSONL, "".join(json.dumps(r) + "\n" for r in records)
        )
        runs.write_atomic(self.directory / PROGRESS_FILE, json.dumps(self.state) + "\n")

    def groups(self, start: int) -> Iterator[tuple[bytes, ...]]:
        """This shard's chunks from its `start`-th, in groups of `shard_group` (read ahead)."""
        chunks = self.source.chunks(self.config.num_chunks, self.config.chunk_size)
        mine = itertools.islice(chunks, self.index + start * self.count, None, self.count)
        return sources.prefetch(itertools.batched(mine, self.config.shard_group), 1)

    def bar(self, label: str, passes: int = 1) -> tqdm:
        expected = self.state["expected_chunks"]
        total = expected * self.config.chunk_size * passes if expected else None
        return _progress(self.config, total, f"{label} [{self.index}-of-{self.count}]")

    def finish(self, entry: dict, records: list[dict], identities: dict, extra: dict) -> None:
        for record in records:
            identity = identities[record["compressor"]]
            record.update({k: v for k, v in identity.items() if v is not None})
            record["shard"] = {
                "index": self.index,
                "count": self.count,
                "key": entry["key"],
                "sums": entry["sums"],
                "identity": identity,
                **extra.get(record["compressor"], {}),
            }
        entry["done"], entry["records"] = True, records
        self.save()

    def classical(self, name: str, names: list[str], chunking: str, identities: dict) -> list:
        config = self.config
        key = {"identities": {n: identities[n] for n in names}, "num_chunks": config.num_chunks}
        entry = self.entry(name, key)
        if entry["done"]:
            return entry["records"]
        mode = _seven_bit(config, self.source, names[0])
        if chunking == "unchunked":  # one stream over the whole dataset, in one go
            counted = _Counted(self.source.chunks(config.num_chunks, config.chunk_size), mode)
            with _progress(config, _expected_bytes(config, self.source), "classical") as bar:
                sizes = pool.compress_sizes(
                    sources.prefetch(iter(counted)), names, chunked=False, unchunked=True,
                    progress=bar.update,
                )  # fmt: skip
            entry["next"] = counted.num_chunks
            entry["sums"] = {**_counts(counted), "sizes": {n: sizes[n]["unchunked"] for n in names}}
        else:
            sums = entry["sums"] or {**_counts(None), "sizes": {n: [0, 0.0] for n in names}}
            with self.bar("classical") as bar:
                bar.update(entry["next"] * config.chunk_size)
                for group in self.groups(entry["next"]):
                    counted = _Counted(iter(group), mode)
                    with self.signals.blocked():
                        sizes = pool.compress_sizes(
                            iter(counted), names, chunked=True, unchunked=False,
                            workers=config.workers, block_chunks=config.block_chunks,
                            progress=bar.update,
                        )  # fmt: skip
                    for key_, value in _counts(counted).items():
                        sums[key_] += value
                    for n in names:
                        size, seconds = sizes[n]["chunked"]
                        sums["sizes"][n] = [
                            sums["sizes"][n][0] + size,
                            sums["sizes"][n][1] + seconds,
                        ]
                    entry["next"] += len(group)
                    entry["sums"] = sums
                    self.save()
                    self.stop_if_signalled()
            entry["sums"] = sums
        sums = entry["sums"]
        totals = types.SimpleNamespace(**_counts_of(sums))
        sizes = {n: {chunking: tuple(sums["sizes"][n])} for n in names}
        if totals.num_chunks:
            records = _classical_records(config, self.source, names, totals, sizes)
        else:
            records = [_empty_record(config, self.source, n, chunking) for n in names]
        extra = {n: {"size": sums["sizes"][n][0], "seconds": sums["sizes"][n][1]} for n in names}
        self.finish(entry, records, identities, extra)
        return records

    def model(self, name: str, identity: dict, load: Callable) -> list:
        config = self.config
        key = {"identities": {name: identity}, "num_chunks": config.num_chunks,
               "verify": bool(config.lm.coded and config.lm.verify)}  # fmt: skip
        entry = self.entry(name, key)
        if entry["done"]:
            return entry["records"]
        lm = load()
        mode = _seven_bit(config, self.source, name)
        host, num_hosts = hosts()
        zero = {k: 0 for k in lm.COUNTS}
        sums = entry["sums"] or {
            **_counts(None), "ideal_bits": 0.0, "coded_bytes": 0 if config.lm.coded else None,
            "counts": zero, "seconds": {},
        }  # fmt: skip
        passes = int(config.lm.log_loss) + int(config.lm.coded)
        with self.bar(name, passes) as bar:
            bar.update(entry["next"] * config.chunk_size * passes)
            for group in self.groups(entry["next"]):
                counted = _Counted(iter(group[host::num_hosts]), mode)
                chunks = list(counted)
                stats = lm.rate(
                    lambda chunks=chunks: iter(chunks),
                    config.chunk_size,
                    log_loss=config.lm.log_loss,
                    coded=config.lm.coded,
                    verify=config.lm.verify,
                    progress=lambda label: _Bar(bar, self),
                    prefetch=config.lm.prefetch,
                )
                sums = _add_sums(sums, _sums_over_hosts(_lm_sums(config, lm, stats, counted)))
                entry["next"] += len(group)
                entry["sums"] = sums
                self.save()
                self.stop_if_signalled()
        entry["sums"] = sums
        fields = lm.record_fields(sums["counts"], config.lm.coded)
        devices = len(lm.devices) * num_hosts
        if sums["num_chunks"]:
            records = [_lm_record(config, self.source, name, _nan(sums), lm.num_params, devices,
                                  fields)]  # fmt: skip
        else:
            records = [_empty_record(config, self.source, name, "chunked")]
        extra = {
            "fields": fields,
            "fields_at_zero": lm.record_fields(zero, config.lm.coded),
            "num_params": lm.num_params,
            "devices": devices,
        }
        self.finish(entry, records, {name: identity}, {name: extra})
        return records


def evaluate_shard(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, index: int, count: int
) -> list[dict[str, Any]]:
    """Rates shard `index` of `count` of `config`'s chunks (see the comment above `SHARDS_DIR`)
    into WORKDIR/shards/I-of-N/results.jsonl; `merge_shards` makes the usual records of them.

    Each record is a usual record of the shard's chunks (a shard with no chunks gives counts
    only) plus `shard`: its index and count, the entry's key, identity and sums (chunks, raw
    bytes, missed bits; classical: compressed bytes before the header convention; models:
    ideal bits, coded bytes, their counts and each pass's seconds), what merging needs.

    Returns:
      The shard's records.

    Raises:
      ValueError: a bad config or shard, as `evaluate`.
      ShardStopped: SIGTERM or SIGUSR1 came; the progress is saved.
    """
    if not 0 <= index < count:
        raise ValueError(f"--shard={index}/{count}: give I/N with 0 <= I < N.")
    if config.shard_group < 1:
        raise ValueError(f"--config.shard_group={config.shard_group} must be at least 1.")
    if config.distributed:
        from training import runtime

        runtime.initialize_distributed()
    names, source = prepare(config, split=True)
    dataset = _dataset_fields(config)
    records = []
    with _Signals() as signals:
        shard = _Shard(config, source, workdir, index, count, signals)
        for name, members, chunking in shard_entries(config, names, index):
            if not _is_model(name):
                identities = {n: _identity(config, source, n, dataset) for n in members}
                records += shard.classical(name, members, chunking, identities)
            else:
                load = functools.cache(functools.partial(_model, config, name))
                identity = _identity(config, source, name, dataset, load)
                records += shard.model(name, identity, load)
            shard.stop_if_signalled()  # e.g. one that came during the unchunked streams
    return records


def merge_shards(config, shards: list[list[dict]]) -> list[dict[str, Any]]:
    """The usual records (as `evaluate` makes them) of a configuration from its N shards'
    records (`evaluate_shard`, shard I's at position I, each complete and of the same keys).

    Sums are added; the chunked classical compressors' header convention is applied to the
    totals (one header per chunk but the first, as a single run); models' `record_fields` are
    taken affine in their counts (sum over shards minus N - 1 times the fields at zero counts).
    Seconds are summed over the shards (the compute spent); `shards` says N.
    """
    by_key: dict[tuple, list[dict]] = {}
    for records in shards:
        for record in records:
            by_key.setdefault((record["compressor"], record["chunking"]), []).append(record)
    merged = []
    for (name, chunking), parts in by_key.items():
        first = parts[0]
        source = types.SimpleNamespace(name=first["dataset"], modality=first["modality"])
        sums = [p["shard"]["sums"] for p in parts]
        totals = {k: sum(s[k] for s in sums) for k in ("num_chunks", "raw_bytes", "missed_bits")}
        if totals["num_chunks"] == 0:
            raise ValueError(f"{first['dataset']} yielded no chunks.")
        if not _is_model(name):
            size = sum(p["shard"]["size"] for p in parts)
            seconds = sum(p["shard"]["seconds"] for p in parts)
            counted = types.SimpleNamespace(**totals)
            sizes = {name: {chunking: (size, seconds)}}
            (record,) = _classical_records(config, source, [name], counted, sizes)
        else:
            total = _add_all(sums)
            fields = _affine_fields([p["shard"] for p in parts])
            shard = first["shard"]
            record = _lm_record(config, source, name, _nan(total), shard["num_params"],
                                shard["devices"], fields)  # fmt: skip
        identity = first["shard"]["identity"]
        record.update({k: v for k, v in identity.items() if v is not None})
        record["shards"] = first["shard"]["count"]
        merged.append(record)
    return merged


def save(workdir: str | os.PathLike, records: list[dict]) -> None:
    """Merges `records` into WORKDIR/results.jsonl and results.csv (same key: replaced)."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _save(workdir, records)


def _counts(counted) -> dict:
    if counted is None:
        return {"num_chunks": 0, "raw_bytes": 0, "missed_bits": 0}
    return {k: getattr(counted, k) for k in ("num_chunks", "raw_bytes", "missed_bits")}


def _counts_of(sums: dict) -> dict:
    return {k: sums[k] for k in ("num_chunks", "raw_bytes", "missed_bits")}


def _nan(sums: dict) -> dict:
    """Model sums as `_lm_record` takes them: a pass not run is NaN (JSON keeps None)."""
    nan = float("nan")
    return {
        **sums,
        "ideal_bits": nan if sums["ideal_bits"] is None else sums["ideal_bits"],
        "coded_bytes": nan if sums["coded_bytes"] is None else sums["coded_bytes"],
    }


def _add_sums(total: dict, more: dict) -> dict:
    """Two models' sums added (a pass not run stays None)."""
    out = {k: total[k] + more[k] for k in ("num_chunks", "raw_bytes", "missed_bits")}
    for k in ("ideal_bits", "coded_bytes"):
        a, b = total[k], more[k]
        out[k] = None if a is None or b is None or b != b else a + b  # b != b: NaN
    if out["coded_bytes"] is not None:
        out["coded_bytes"] = int(out["coded_bytes"])
    counts, seconds = dict(total["counts"]), dict(total["seconds"])
    for k, v in more["counts"].items():
        counts[k] = counts.get(k, 0) + v
    for k, v in more["seconds"].items():
        seconds[k] = seconds.get(k, 0.0) + v
    return {**out, "counts": counts, "seconds": seconds}


def _add_all(sums: list[dict]) -> dict:
    total = sums[0]
    for more in sums[1:]:
        total = _add_sums(total, more)
    return total


def _affine_fields(shards: list[dict]) -> dict:
    """A model's `record_fields` of the summed counts, from each shard's fields and the fields
    at zero counts: numbers add up (less N - 1 times their value at zero), the rest is shard
    0's."""
    fields, zero = dict(shards[0]["fields"]), shards[0]["fields_at_zero"]
    for key, value in fields.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            total = sum(s["fields"][key] for s in shards) - (len(shards) - 1) * zero[key]
            fields[key] = type(value)(total) if isinstance(value, int) else total
    return fields


def _empty_record(config, source, compressor: str, chunking: str) -> dict:
    """A shard's record when it got no chunks (more shards than chunks): its counts only."""
    return {
        "compressor": compressor,
        "dataset": source.name,
        "chunking": chunking,
        "chunk_size": config.chunk_size,
        "num_chunks": 0,
        "raw_bytes": 0,
        "modality": source.modality,
        "seven_bit": _seven_bit(config, source, compressor),
        "missed_bits": 0,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def changed_paths(old, new, prefix: str = "") -> list[str]:
    """The dotted paths at which two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += changed_paths(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".").split(".")[-1]]
