"""Streams of a language model's coder: compress and decompress files, one versioned format.

`compress_file` reads any bytes (a file, a FIFO, standard input) in chunks, codes them `lanes` at a
time with a `models.lm_coder.LMCoder` and writes `coding.container`'s format: a header with the
coder's settings (`CoderShape.to_dict`, the coding path, the model's kind and what else it records),
the model's fingerprint and the environment its tables depend on, then each group's payloads.
`decompress_file` reads such a stream back with the same model, refusing up front a different
model, a machine that would compute other floats, or settings no encoder writes, and checks every
group's crc32 and the whole file's sha256. Models are named as `compressors.model_names` reads
them (RUN_DIR or hf:PATH); compress.py is the command line over this module.

Output files appear only when complete (`container.atomic_output`; `force` to replace one that
exists, never the input; a FIFO or a device such as /dev/null is written into, as standard output
is); on any error nothing is left behind.
"""

import contextlib
import hashlib
import itertools
import os
import sys
import time
from collections.abc import Iterator
from typing import BinaryIO

import paths
from coding import container
from compressors import model_names
from data import pretrained_tokenizers as tokenizers
from models import coding_model, integer, lm_coder, numerics

DEFAULT_LANES = 0  # 0: chosen from the device's memory (lm_coder.default_lanes)


def _pieces(src: BinaryIO, size: int, digest, progress) -> Iterator[bytes]:
    """Yields `src` in pieces of `size` bytes, hashing and counting them."""
    while piece := src.read(size):
        digest.update(piece)
        progress.update(len(piece))
        yield piece


@contextlib.contextmanager
def _opened(path: str, mode: str, force: bool = False):
    """A file to read or write; '-' is standard input (spooled) or output. Files written appear
    only complete (`container.atomic_output`); an existing one is replaced only with `force`,
    and a FIFO or character device (/dev/null) is written into as standard output is. An
    input that cannot seek (a FIFO) is spooled like standard input."""
    path = os.fspath(path)
    if path == "-":
        yield container.spool(sys.stdin.buffer) if mode == "r" else sys.stdout.buffer
    elif mode == "r":
        with open(path, "rb") as f, contextlib.closing(container.spool(f)) as seekable:
            yield seekable
    else:
        paths.check_output(path, force=force)  # again: it may have appeared since the first check
        if paths.writes_in_place(path):
            with open(path, "wb") as f:
                yield f
        else:
            with container.atomic_output(path) as f:
                yield f


def check_paths(input_path: str, output_path: str, force: bool) -> None:
    """Refuses, before any work, a missing input or a directory, and an output that is the
    input (a symlink or hard link to it too), a directory, an existing file without `force` or
    anything but a regular file, FIFO or character device (paths.check_output)."""
    paths.check_input(input_path)
    paths.check_output(output_path, input_path, force)


class _Clock:
    """Seconds from the start of the work, and when the first group was done: that group
    compiles the coder's programs, the later ones code at the steady rate a long input sees."""

    def __init__(self):
        self.start = time.perf_counter()
        self.first_group: tuple[float, int] | None = None  # (time, raw bytes done)

    def group_done(self, raw_bytes_done: int) -> None:
        if self.first_group is None:
            self.first_group = time.perf_counter(), raw_bytes_done

    def summary(self, raw_bytes: int) -> dict:
        """seconds and MB/s in all; with more than one group, also the first group's seconds
        and the MB/s of the later groups (`steady_mb_per_s`)."""
        now = time.perf_counter()
        seconds = now - self.start
        out = {"seconds": seconds, "mb_per_s": raw_bytes / 1e6 / seconds}
        if self.first_group and raw_bytes > self.first_group[1]:
            done, first_bytes = self.first_group
            out["first_group_seconds"] = done - self.start
            out["steady_mb_per_s"] = (raw_bytes - first_bytes) / 1e6 / (now - done)
        return out


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not enabled)


def compress_file(
    model: str,
    input_path: str,
    output_path: str,
    lanes: int = DEFAULT_LANES,
    chunk_size: int = 0,
    step: int | None = None,
    progress: bool = False,
    force: bool = False,
    portable: bool | None = None,
    kv_dtype: str = "",
    top_k: int = 0,
    dtype: str = "",
    recipe: str = "",
    trace: list | None = None,
) -> dict:
    """Compresses `input_path` into `output_path` ('-': standard input / output).

    With `portable` (the default for models that have it: our runs) the model's tables come
    from its integer-only version (models/integer.py), so the stream decodes on any machine;
    without, from its float probabilities, which decode only where the floats are the same (the
    stream says which); `kv_dtype` ('bfloat16', 'int8') shrinks that path's KV cache, `top_k` > 0
    codes under the paper's top-k tables, `dtype` ('float32', 'bfloat16'; '' the model's own)
    is the float model's compute dtype (recorded; decompress follows the stream). `lanes` 0
    picks them from the device's memory (a model that learns while it codes fixes them).

    Args:
      model: a model name (`compressors.model_names`): RUN_DIR, hf:PATH or online:SIZE.
      recipe: an online model's refinements, `key=value,...` (`compressors.online.Recipe`).
      trace: if given, (raw bytes read, stream bytes written) is appended after every group:
        the learning curve of a model that learns while it codes.

    Returns:
      Summary: raw and compressed bytes, coded-payload bytes, chunks (and how many stored raw),
      ratio, bits per byte, ideal bits (the model's sum of -log2 p: on the portable path, its
      integer tables'), the coding `path` ('integer' or 'float'), seconds and MB/s (`_Clock`:
      with more than one group, also those of the first group and of the later ones).

    Raises:
      ValueError, OSError: bad arguments, model, or an existing output without `force`
        (`check_paths`: before any work).
    """
    check_paths(input_path, output_path, force)
    for flag, value in (("lanes", lanes), ("chunk_size", chunk_size), ("top_k", top_k)):
        if value < 0:
            raise ValueError(f"--{flag}={value}: give 0 (the default) or more.")
    m = model_names.load(model, step=step, dtype=dtype, recipe=recipe)
    if lanes and m.lanes and lanes != m.lanes:
        raise ValueError(f"{model} codes {m.lanes} lanes a group: set them in its recipe.")
    if portable or (portable is None and m.exact_twin is not None):
        if dtype or top_k or kv_dtype:
            raise ValueError(
                "--dtype, --top_k and --kv_cache apply to the float path: add --noportable."
            )
        m = m.exact()
    clock = _Clock()
    digest = hashlib.sha256()
    with _opened(input_path, "r") as src, _opened(output_path, "w", force) as out:
        raw_bytes = src.seek(0, os.SEEK_END)
        src.seek(0)
        chunk = chunk_size or m.chunk_bytes
        num_chunks = -(-raw_bytes // chunk)
        # A pretrained tokenizer may add a token (SentencePiece's leading space); more tokens than
        # this and the chunk is coded as byte tokens, one per byte.
        max_tokens = m.chunk_tokens(chunk)
        lanes = lanes or m.lanes or lm_coder.default_lanes(m.net, max_tokens)
        shape = lm_coder.CoderShape(
            lanes=max(1, min(lanes, num_chunks)),
            chunk_tokens=max_tokens,
            attention_blocks=m.net.attention_blocks(max_tokens),
            kv_dtype=kv_dtype,
            top_k=top_k,
        )
        coder = lm_coder.LMCoder(m.net, m.params, shape)
        info = stream_info(m, coder)
        writer = container.ContainerWriter(
            out, info.pack(), chunk, raw_bytes, shape.lanes, m.columns
        )
        with _bar(raw_bytes, "compress", progress) as bar:
            groups = itertools.batched(_pieces(src, chunk, digest, bar), shape.lanes)
            ideal_bits, payload_bytes, num_raw = _write_groups(
                groups, m, coder, writer, bar, trace, clock
            )
        writer.finish(digest.digest())
        compressed_bytes = writer.bytes_written
    return {
        "path": m.path,
        "raw_bytes": raw_bytes,
        "compressed_bytes": compressed_bytes,
        "payload_bytes": payload_bytes,
        "num_chunks": num_chunks,
        "raw_chunks": num_raw,
        "ratio": compressed_bytes / raw_bytes if raw_bytes else None,
        "bits_per_byte": 8 * compressed_bytes / raw_bytes if raw_bytes else None,
        "ideal_bits": ideal_bits,
        **clock.summary(raw_bytes),
    }


def _write_groups(groups, m: coding_model.CodingModel, coder, writer, bar, trace, clock) -> tuple:
    """Codes each group of chunks and writes it, the model learning from each group after it
    (`CodingModel.learn`: nothing for most models); returns (the model's ideal bits, payload
    bytes, chunks stored raw). The bar shows the bits per byte written so far."""
    ideal_bits, payload_bytes, num_raw, seen = 0.0, 0, 0, 0
    columns = writer.header.columns
    for pieces in groups:
        tokens = [m.tokenize(p, coder.shape.chunk_tokens) for p in pieces]
        coded = list(coder.encode_chunks([ids for ids, _ in tokens]))
        m.learn([ids for ids, _ in tokens])
        coder.params = m.params
        raw = writer.write_group(
            [
                p if mode == tokenizers.MODE_RAW else c.payload  # no tokens: stored as it is
                for p, c, (_, mode) in zip(pieces, coded, tokens, strict=True)
            ],
            b"".join(pieces),
            [c.num_tokens for c in coded] if "symbols" in columns else (),
            [mode for _, mode in tokens] if "mode" in columns else (),
        )
        ideal_bits += sum(c.bits for c in coded)
        payload_bytes += sum(len(c.payload) for c in coded)
        num_raw += sum(raw)
        seen += sum(map(len, pieces))
        clock.group_done(seen)
        bar.set_postfix_str(f"{8 * writer.bytes_written / max(seen, 1):.3f} bits/byte")
        if trace is not None:
            trace.append((seen, writer.bytes_written))
    return ideal_bits, payload_bytes, num_raw


def stream_info(m: coding_model.CodingModel, coder: lm_coder.LMCoder) -> container.StreamInfo:
    """What a stream's header says of its coder and model (`coder_for` reads it back)."""
    settings = {"model": m.kind, **coder.shape.to_dict(), "path": m.path, **m.settings}
    if m.net.exact:  # tables the same everywhere: only their definition's version matters
        return container.StreamInfo(
            m.fingerprint, settings, {"integer_tables": integer.TABLES_VERSION}
        )
    return container.StreamInfo(m.fingerprint, settings, numerics.environment())


def coder_for(info: container.StreamInfo, header: container.Header, m: coding_model.CodingModel):
    """The coder a stream was made with, after checking its fields against what an encoder
    could have written for this file and against this device's memory.

    Raises:
      container.FormatError: impossible or unaffordable fields (one line each).
    """
    c = info.coder
    try:
        if c.get("model", "run") != m.kind:
            made = model_names.KINDS.get(c.get("model"), repr(c.get("model")))
            raise ValueError(f"it was made by {made}")
        if c.get("path") not in ("float", "integer"):
            raise ValueError(f"the {c.get('path')!r} coding path is not supported by this release")
        if c.get("path") != m.path:
            raise ValueError(f"its {c['path']} path is not this model's {m.path} one")
        shape = lm_coder.CoderShape.from_dict(c)
        if shape.lanes > max(1, header.num_chunks):
            raise ValueError(f"{shape.lanes} lanes for {header.num_chunks} chunks")
        chunk = header.chunk_size_bytes
        if header.group_chunks != shape.lanes or shape.chunk_tokens != m.chunk_tokens(chunk):
            raise ValueError("the header's group and chunk sizes differ from the coder's")
        coder = lm_coder.LMCoder(m.net, m.params, shape)
        # compress writes the blocks its chunk length calls for; others cost more compiles.
        blocks = m.net.attention_blocks(shape.chunk_tokens)
        if shape.attention_blocks != blocks:
            raise ValueError(
                f"attention_blocks={shape.attention_blocks}, where compress writes {blocks} for "
                f"chunks of {shape.chunk_tokens} tokens"
            )
    except (KeyError, TypeError, ValueError) as e:
        raise container.FormatError(f"impossible stream settings: {e}") from None
    need, have = coder.memory_bytes(), _device_memory_bytes()
    if have and need > have // 2:
        raise container.FormatError(
            f"this stream's {shape.lanes} lanes need about {need / 2**30:.1f} GiB to decode, "
            f"more than half of this device's {have / 2**30:.1f} GiB: decode on a larger device"
        )
    return coder


def _device_memory_bytes() -> int:
    """The first device's memory (GPU) or this machine's RAM (CPU); 0 if unknown."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return 0


def decompress_file(
    model: str | None,
    input_path: str,
    output_path: str,
    step: int | None = None,
    progress: bool = False,
    force: bool = False,
) -> dict:
    """Decompresses `input_path` (made by `compress_file` with the same model: a run's workdir
    or `hf:PATH`; None for a stream that describes its model whole, an online model's) into
    `output_path`.

    Returns:
      raw bytes, seconds and MB/s (with more than one group, also those of the first group and
      of the later ones: `_Clock`).

    Raises:
      container.FormatError: wrong model or environment, truncated or corrupted stream (one
        line naming the damaged group).
      coding.range_coder.CorruptStreamError: a chunk failed its decoding checks.
      ValueError, OSError: bad paths (`check_paths`: before any work).
    """
    check_paths(input_path, output_path, force)
    with _opened(input_path, "r") as src:
        reader = container.ContainerReader(src)
        info = container.StreamInfo.unpack(reader.header.info)
        dtype = str(info.coder.get("dtype", ""))  # a float model computes in the stream's dtype
        if dtype not in ("", "float32", "bfloat16"):
            raise container.FormatError(f"impossible stream settings: dtype {dtype!r}")
        m = model_names.for_stream(info.coder, model, step, dtype)
        clock = _Clock()
        if info.model != m.fingerprint:
            raise container.FormatError(
                "this stream was made by a different model (or checkpoint): decompress with the "
                "run and --step, or the hf: model, that compressed it"
            )
        _check_environment(info)
        if info.coder.get("path") == "integer" and m.exact_twin is not None:
            m = m.exact()
        coder = coder_for(info, reader.header, m)
        reader.max_payload_bytes = coder.capacity_bytes
        with _opened(output_path, "w", force) as out:
            raw_bytes = _decode_groups(reader, coder, m, out, progress, clock)
    return {"raw_bytes": raw_bytes, **clock.summary(raw_bytes)}


def _check_environment(info: container.StreamInfo) -> None:
    """Refuses up front a stream this machine cannot reproduce the tables of.

    Raises:
      container.FormatError: naming the difference and the way out.
    """
    if info.coder.get("path") == "integer":
        made = info.environment.get("integer_tables")
        if made != integer.TABLES_VERSION:
            raise container.FormatError(
                f"this stream's integer tables are version {made}, this release computes "
                f"version {integer.TABLES_VERSION}: decompress with the release that made it"
            )
        return
    differences = numerics.differences(info.environment)
    if differences:
        raise container.FormatError(
            f"this machine would compute other floats than the compressing one did "
            f"({'; '.join(differences)}); or compress with --portable (the default), whose "
            "streams decode anywhere"
        )


def _decode_groups(reader, coder, m: coding_model.CodingModel, out, progress: bool, clock) -> int:
    """Decodes every group into `out`, checking each against its crc32 and all against the
    sha256. Returns the bytes written."""
    digest, total, done = hashlib.sha256(), reader.header.original_length_bytes, 0
    max_tokens = coder.shape.chunk_tokens
    with _bar(total, "decompress", progress) as bar:
        for group in reader.groups():
            if not m.columns:  # byte tokens: one per byte
                for c in group.chunks:
                    if not c.raw and c.symbols != c.length_bytes:
                        raise container.FormatError(f"chunk {c.index}: symbol count != length")
            # A chunk stored raw is fed to the model as the encoder fed it: its tokens again.
            items = [
                (c.payload, len(ids), ids) if c.raw else (c.payload, c.symbols, None)
                for c in group.chunks
                for ids in [m.tokenize(c.payload, max_tokens)[0] if c.raw else None]
            ]
            blocks, decoded = [], []
            for c, tokens in zip(group.chunks, coder.decode_chunks(items), strict=True):
                decoded.append(tokens)
                try:
                    block = c.payload if c.raw else m.detokenize(tokens, c.mode)
                except ValueError as e:
                    raise container.FormatError(f"chunk {c.index} is corrupted: {e}") from None
                if len(block) != c.length_bytes:
                    raise container.FormatError(
                        f"chunk {c.index} decodes to {len(block)} bytes, not {c.length_bytes}"
                    )
                blocks.append(block)
            original = b"".join(blocks)
            group.verify(original)
            m.learn(decoded)  # as the encoder did after this group
            coder.params = m.params
            digest.update(original)
            out.write(original)
            bar.update(len(original))
            done += len(original)
            clock.group_done(done)
    reader.verify_original(digest.digest())
    return total
