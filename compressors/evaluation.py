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

import datetime
import functools
import hashlib
import itertools
import json
import os
import pathlib
import sys
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
    if config.chunking not in CHUNKINGS:
        raise ValueError(f"chunking must be one of {CHUNKINGS}, got {config.chunking!r}.")
    chunked = config.chunking in ("chunked", "both")
    unchunked = config.chunking in ("unchunked", "both")
    mode = _seven_bit(config, source, names[0])
    counted = _Counted(source.chunks(config.num_chunks, config.chunk_size), mode)
    with _progress(config, _expected_bytes(config, source), "classical") as bar:
        sizes = pool.compress_sizes(
            sources.prefetch(iter(counted)),
            names,
            chunked=chunked,
            unchunked=unchunked,
            workers=config.workers,
            block_chunks=config.block_chunks,
            progress=bar.update,
        )
    if counted.num_chunks == 0:
        raise ValueError(f"{source.name} yielded no chunks.")
    records = []
    for name in names:
        if chunked:
            header = classical.header_bytes(name)
            size, seconds = sizes[name]["chunked"]
            size -= header * (counted.num_chunks - 1)  # the container counted once
            record = _record(config, source, name, "chunked", counted, size, 0, seconds)
            records.append({**record, "header_bytes": header})
        if unchunked:
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
    last = counted[-1]
    coded_bytes = stats["coded_bytes"] if config.lm.coded else float("nan")
    counts = [stats.get(k, 0) for k in lm.COUNTS]
    num_chunks, raw_bytes, missed_bits, ideal_bits, coded_bytes, *counts = _sum_over_hosts(
        [last.num_chunks, last.raw_bytes, last.missed_bits, stats["ideal_bits"], coded_bytes]
        + counts
    )
    last.num_chunks, last.raw_bytes, last.missed_bits = (
        int(num_chunks),
        int(raw_bytes),
        int(missed_bits),
    )
    if last.num_chunks == 0:
        raise ValueError(f"{source.name} yielded no chunks.")
    seconds = {k: v for k, v in stats.items() if k.endswith("_seconds")}
    wall = sum(seconds.values())  # this host's; hosts run side by side
    compressed = int(coded_bytes) if config.lm.coded else ideal_bits / 8
    record = _record(config, source, entry, "chunked", last, compressed, lm.num_params, wall)
    scale = compressors.seven_bit_scale(last.raw_bytes, last.missed_bits)
    scale = scale if last.missed_bits else 1  # keeps byte counts integers
    log_loss_bytes = ideal_bits / 8 * scale
    record.update(
        rate_from="coded" if config.lm.coded else "log_loss",
        coded_bytes=int(coded_bytes) * scale if config.lm.coded else None,
        log_loss_bytes=log_loss_bytes if config.lm.log_loss else None,
        log_loss_rate=log_loss_bytes / last.raw_bytes if config.lm.log_loss else None,
        verified=bool(config.lm.coded and config.lm.verify),
        devices=len(lm.devices) * num_hosts,
        **seconds,
    )
    record.update(lm.record_fields(dict(zip(lm.COUNTS, counts, strict=True)), config.lm.coded))
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
    check_config(config)
    names = compressors.parse_names(config.compressors)
    _check_models(config, names)
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
    chunkings = ["chunked"]
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
