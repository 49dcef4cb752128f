r"""Exact lossless compression with a language model: one we trained, or a pretrained one on disk.

  python compress.py compress --workdir=RUN_DIR INPUT OUTPUT
  python compress.py decompress --workdir=RUN_DIR INPUT OUTPUT
  cat INPUT | python compress.py compress --workdir=RUN_DIR - - > OUTPUT
  python compress.py compress --model=hf:PATH INPUT OUTPUT      # e.g. Llama 2 7B on disk

RUN_DIR is a training run's workdir (train.py); PATH a Hugging Face model directory (config.json,
*.safetensors, tokenizer.json or tokenizer.model; models/pretrained.py lists the architectures). A
pretrained model codes each chunk's tokens (data/pretrained_tokenizers.py: UTF-8 text, else Latin-1,
else the tokenizer's byte tokens; a chunk with more tokens than `--chunk_size` + 1, or than the
context, is coded as byte tokens, or stored raw by a tokenizer without them) on the float path,
under the whole vocabulary (`--top_k=0`, the default) or the paper's top-k tables. Chunks are 2048
bytes by default (the paper's), at most the context.

Any bytes work: text, images, audio, binary, empty files. Input is read and output written one group
of `--lanes` chunks at a time, so files larger than memory stream through. A chunk the model would
not make shorter is stored as it is, so no file grows by more than a few bytes per chunk. Output
files appear only when complete (`--force` to replace one that exists, never the input; a FIFO or
a device such as /dev/null is written into, as standard output is); on any error, Ctrl-C or
SIGTERM the command prints one line, exits non-zero and leaves no output file behind. With `-` the
input is read from standard input (spooled to a temporary file) and the output written to standard
output, the summary then going to standard error; decompressing to standard output writes data
before the final checksum can be checked, so a mismatch found at the end exits with status 1 and
says so.

Streams of the float path (`--noportable`, and every hf: model) decode exactly only where the
model's floats are the same as the encoder's: the same run and checkpoint, jax version, kind of
device, CPU instruction set and numerics flags (models/numerics.py). The stream records them and
decompression refuses a mismatch up front, naming it. See models/lm_coder.py for how encoder and
decoder share their tables."""

import contextlib
import hashlib
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, NamedTuple

import numpy as np
from absl import app, flags

import cli
import compressors
import paths
import runs
from coding import container
from data import pretrained_tokenizers as tokenizers
from models import integer, lm_coder, numerics
from models import pretrained as pretrained_models
from training import checkpoints

DEFAULT_LANES = 0  # 0: chosen from the device's memory (lm_coder.default_lanes)
MAX_PRETRAINED_CHUNK = 2048  # bytes per chunk by default for hf: models (the paper's chunks)


class _Model(NamedTuple):
    """What compress and decompress need of a model.

    Attributes:
      model: the coder's model: our `TransformerConfig` or a `pretrained.CodingModel`.
      params: its parameters.
      fingerprint: sha256 hex of everything that decides its tables (the stream's `model`).
      encode: (chunk bytes, most tokens) -> (token ids, mode).
      decode: (token ids, mode) -> chunk bytes.
      byte_level: a chunk's tokens are its bytes (no 'symbols' or 'mode' column needed).
      context: the most tokens a chunk may have.
    """

    model: Any
    params: Any
    fingerprint: str
    encode: Callable[[bytes, int], tuple[np.ndarray, int]]
    decode: Callable[[np.ndarray, int], bytes]
    byte_level: bool
    context: int


def _load(spec: str, step: int | None, dtype: str = "float32") -> _Model:
    """Loads a run's checkpoint (a workdir) or a pretrained model (`hf:PATH`, in `dtype`)."""
    from compressors import fingerprints

    if spec.startswith(compressors.HF_PREFIX):
        if step is not None:
            raise ValueError("--step applies to training runs (--workdir), not to hf: models.")
        return _load_pretrained(spec[len(compressors.HF_PREFIX) :], dtype)
    config = runs.load_config(spec)
    model_cfg, params, step = checkpoints.restore_params(spec, step)
    tokenizer = runs.load_tokenizer(spec, config)
    _, fingerprint = fingerprints.run_fingerprint(spec, step, params=params)
    return _Model(
        model_cfg,
        params,
        fingerprint,
        lambda data, max_tokens: (tokenizer.encode(data), 0),
        lambda ids, mode: tokenizer.decode(ids),
        tokenizer.name == "bytes",
        model_cfg.context_length,
    )


def _load_pretrained(path: str, dtype: str) -> _Model:
    """A Hugging Face model directory (models/pretrained.py, data/pretrained_tokenizers.py)."""
    from compressors import fingerprints, pretrained_model
    from data import pretrained_tokenizers as tokenizers
    from models import pretrained

    pretrained_model.check_model_dir(path)
    tokenizer = tokenizers.load_tokenizer(path)
    model, params = pretrained.load(path, start_token=tokenizer.bos_token_id, dtype=dtype)
    tokenizer.check_model_vocab(model.vocab_size)
    # The checkpoint's files, hashed as stored (no copy of the parameters off the device).
    fingerprint = fingerprints.hf_fingerprint(path)

    def encode(data: bytes, max_tokens: int) -> tuple[np.ndarray, int]:
        ids, mode = tokenizer.encode_chunk(data)
        if mode != tokenizers.MODE_RAW and len(ids) > max_tokens:  # byte tokens fit (chunk_size)
            if tokenizer.byte_token_ids is None:
                return np.zeros(0, np.int32), tokenizers.MODE_RAW
            ids = tokenizer.byte_token_ids[np.frombuffer(data, np.uint8)]
            mode = tokenizers.MODE_BYTE_TOKENS
        if mode == tokenizers.MODE_RAW:
            return np.zeros(0, np.int32), mode  # stored raw, nothing for the model
        return ids, mode

    return _Model(
        model,
        params,
        fingerprint,
        encode,
        tokenizer.decode_chunk,
        False,
        model.context_length,
    )


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


def _check_paths(input_path: str, output_path: str, force: bool) -> None:
    """Refuses, before any work, a missing input or a directory, and an output that is the
    input (a symlink or hard link to it too), a directory, an existing file without `force` or
    anything but a regular file, FIFO or character device (paths.check_output)."""
    paths.check_input(input_path)
    paths.check_output(output_path, input_path, force)


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
    dtype: str = "float32",
) -> dict:
    """Compresses `input_path` into `output_path` ('-': standard input / output).

    With `portable` (the default for our runs) the model's tables come from its integer-only
    version (models/integer.py), so the stream decodes on any machine; without, from its float32
    probabilities, which decode only where the floats are the same (the stream says which);
    `kv_dtype` ('bfloat16', 'int8') shrinks that path's KV cache. `lanes` 0 picks them from the
    device's memory. Pretrained models (`hf:PATH`) code on the float path, in `dtype`
    ('float32' or 'bfloat16', recorded in the stream), `top_k` > 0 with the paper's top-k tables.

    Args:
      model: a training run's workdir, or `hf:PATH`.

    Returns:
      Summary: raw and compressed bytes, coded-payload bytes, chunks (and how many stored raw),
      ratio, bits per byte, ideal bits (the model's sum of -log2 p: on the portable path, its
      integer tables'), the coding `path` ('integer' or 'float'), seconds and MB/s.

    Raises:
      ValueError, OSError: bad arguments, run, or an existing output without `force`
        (`_check_paths`: before any work).
    """
    _check_paths(input_path, output_path, force)
    for flag, value in (("lanes", lanes), ("chunk_size", chunk_size), ("top_k", top_k)):
        if value < 0:
            raise ValueError(f"--{flag}={value}: give 0 (the default) or more.")
    pretrained = model.startswith(compressors.HF_PREFIX)
    if not pretrained and dtype != "float32":
        raise ValueError("--dtype applies to hf: models; our runs keep their own.")
    m = _load(model, step, dtype)
    if pretrained and portable:
        raise ValueError("hf: models code on the float path only: drop --portable.")
    if not pretrained and top_k:
        raise ValueError("--top_k applies to hf: models; our runs code the whole vocabulary.")
    portable = not pretrained if portable is None else portable
    start = time.perf_counter()
    digest = hashlib.sha256()
    with _opened(input_path, "r") as src, _opened(output_path, "w", force) as out:
        raw_bytes = src.seek(0, os.SEEK_END)
        src.seek(0)
        chunk = chunk_size or min(m.context, MAX_PRETRAINED_CHUNK if pretrained else m.context)
        if pretrained and chunk > m.context:
            raise ValueError(
                f"--chunk_size={chunk} exceeds the model's context of {m.context} tokens: a chunk "
                "must fit as byte tokens"
            )
        num_chunks = -(-raw_bytes // chunk)
        # A pretrained tokenizer may add a token (SentencePiece's leading space); more tokens than
        # this and the chunk is coded as byte tokens, one per byte.
        max_tokens = _chunk_tokens(m, chunk)
        lanes = lanes or lm_coder.default_lanes(m.model, max_tokens, portable)
        shape = lm_coder.CoderShape(
            lanes=max(1, min(lanes, num_chunks)),
            chunk_tokens=max_tokens,
            attention_blocks=lm_coder.auto_attention_blocks(max_tokens, pretrained),
            portable=portable,
            kv_dtype=kv_dtype,
            top_k=top_k,
        )
        coder = lm_coder.LMCoder(m.model, m.params, shape)
        columns = () if m.byte_level else ("symbols", "mode") if pretrained else ("symbols",)
        info = _stream_info(m.fingerprint, coder, pretrained)
        writer = container.ContainerWriter(out, info.pack(), chunk, raw_bytes, shape.lanes, columns)
        with _bar(raw_bytes, "compress", progress) as bar:
            groups = itertools.batched(_pieces(src, chunk, digest, bar), shape.lanes)
            ideal_bits, payload_bytes, num_raw = _write_groups(groups, m, coder, writer)
        writer.finish(digest.digest())
        compressed_bytes = writer.bytes_written
    seconds = time.perf_counter() - start
    return {
        "path": "integer" if portable else "float",
        "raw_bytes": raw_bytes,
        "compressed_bytes": compressed_bytes,
        "payload_bytes": payload_bytes,
        "num_chunks": num_chunks,
        "raw_chunks": num_raw,
        "ratio": compressed_bytes / raw_bytes if raw_bytes else None,
        "bits_per_byte": 8 * compressed_bytes / raw_bytes if raw_bytes else None,
        "ideal_bits": ideal_bits,
        "seconds": seconds,
        "mb_per_s": raw_bytes / 1e6 / seconds,
    }


def _chunk_tokens(m: _Model, chunk: int) -> int:
    """The coder's tokens per chunk: the chunk's bytes for our runs; for a pretrained model one
    more (SentencePiece's leading space), at most its context."""
    if isinstance(m.model, pretrained_models.CodingModel):
        return min(m.context, chunk + 1)
    return chunk


def _write_groups(groups: Iterator[tuple[bytes, ...]], m: _Model, coder, writer) -> tuple:
    """Codes each group of chunks and writes it; returns (the model's ideal bits, payload
    bytes, chunks stored raw)."""
    ideal_bits, payload_bytes, num_raw = 0.0, 0, 0
    columns = writer.header.columns
    for pieces in groups:
        tokens = [m.encode(p, coder.shape.chunk_tokens) for p in pieces]
        coded = list(coder.encode_chunks([ids for ids, _ in tokens]))
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
    return ideal_bits, payload_bytes, num_raw


def _stream_info(model_sha: str, coder: lm_coder.LMCoder, pretrained: bool) -> container.StreamInfo:
    s = coder.shape
    settings = {
        "model": "hf" if pretrained else "run",
        "lanes": s.lanes,
        "chunk_tokens": s.chunk_tokens,
        "precision_bits": s.precision_bits,
        "attention_blocks": s.attention_blocks,
        "low_bits": s.low_bits,
        "path": "integer" if s.portable else "float",
        "kv_dtype": s.kv_dtype,
        "top_k": s.top_k,
    }
    if pretrained:
        settings["dtype"] = str(coder.cfg.config.dtype)
    if s.portable:  # tables the same everywhere: only their definition's version matters
        return container.StreamInfo(model_sha, settings, {"integer_tables": integer.TABLES_VERSION})
    return container.StreamInfo(model_sha, settings, numerics.environment())


def _coder_for(info: container.StreamInfo, header: container.Header, m: "_Model"):
    """The coder a stream was made with, after checking its fields against what an encoder
    could have written for this file and against this device's memory.

    Raises:
      container.FormatError: impossible or unaffordable fields (one line each).
    """
    c = info.coder
    pretrained = isinstance(m.model, pretrained_models.CodingModel)
    try:
        if c.get("model", "run") != ("hf" if pretrained else "run"):
            raise ValueError("it was made by a " + ("training run" if pretrained else "hf: model"))
        shape = lm_coder.CoderShape(
            int(c["lanes"]),
            int(c["chunk_tokens"]),
            int(c["precision_bits"]),
            int(c["attention_blocks"]),
            int(c["low_bits"]),
            portable=c.get("path") == "integer",
            kv_dtype=str(c.get("kv_dtype", "")),
            top_k=int(c.get("top_k", 0)),
        )
        if c.get("path") not in ("float", "integer"):
            raise ValueError(f"the {c.get('path')!r} coding path is not supported by this release")
        if shape.lanes > max(1, header.num_chunks):
            raise ValueError(f"{shape.lanes} lanes for {header.num_chunks} chunks")
        chunk = header.chunk_size_bytes
        if header.group_chunks != shape.lanes or shape.chunk_tokens != _chunk_tokens(m, chunk):
            raise ValueError("the header's group and chunk sizes differ from the coder's")
        coder = lm_coder.LMCoder(m.model, m.params, shape)
        # compress writes the blocks its chunk length calls for; others cost more compiles.
        blocks = lm_coder.auto_attention_blocks(shape.chunk_tokens, pretrained)
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
    model: str,
    input_path: str,
    output_path: str,
    step: int | None = None,
    progress: bool = False,
    force: bool = False,
) -> dict:
    """Decompresses `input_path` (made by `compress_file` with the same model: a run's workdir
    or `hf:PATH`) into `output_path`.

    Raises:
      container.FormatError: wrong model or environment, truncated or corrupted stream (one
        line naming the damaged group).
      coding.range_coder.CorruptStreamError: a chunk failed its decoding checks.
      ValueError, OSError: bad paths (`_check_paths`: before any work).
    """
    _check_paths(input_path, output_path, force)
    with _opened(input_path, "r") as src:
        reader = container.ContainerReader(src)
        info = container.StreamInfo.unpack(reader.header.info)
        dtype = str(info.coder.get("dtype", "float32"))  # hf: models load in the stream's dtype
        if dtype not in ("float32", "bfloat16"):
            raise container.FormatError(f"impossible stream settings: dtype {dtype!r}")
        m = _load(model, step, dtype)
        start = time.perf_counter()
        if info.model != m.fingerprint:
            raise container.FormatError(
                "this stream was made by a different model (or checkpoint): decompress with the "
                "run and --step, or the hf: model, that compressed it"
            )
        _check_environment(info)
        coder = _coder_for(info, reader.header, m)
        reader.max_payload_bytes = coder.capacity_bytes
        with _opened(output_path, "w", force) as out:
            raw_bytes = _decode_groups(reader, coder, m, out, progress)
    seconds = time.perf_counter() - start
    return {"raw_bytes": raw_bytes, "seconds": seconds, "mb_per_s": raw_bytes / 1e6 / seconds}


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


def _decode_groups(reader, coder, m: _Model, out, progress: bool) -> int:
    """Decodes every group into `out`, checking each against its crc32 and all against the
    sha256. Returns the bytes written."""
    digest, total = hashlib.sha256(), reader.header.original_length_bytes
    max_tokens = coder.shape.chunk_tokens
    with _bar(total, "decompress", progress) as bar:
        for group in reader.groups():
            if m.byte_level:
                for c in group.chunks:
                    if not c.raw and c.symbols != c.length_bytes:
                        raise container.FormatError(f"chunk {c.index}: symbol count != length")
            # A chunk stored raw is fed to the model as the encoder fed it: its tokens again.
            items = [
                (c.payload, len(ids), ids) if c.raw else (c.payload, c.symbols, None)
                for c in group.chunks
                for ids in [m.encode(c.payload, max_tokens)[0] if c.raw else None]
            ]
            blocks = []
            for c, tokens in zip(group.chunks, coder.decode_chunks(items), strict=True):
                try:
                    block = c.payload if c.raw else m.decode(tokens, c.mode)
                except ValueError as e:
                    raise container.FormatError(f"chunk {c.index} is corrupted: {e}") from None
                if len(block) != c.length_bytes:
                    raise container.FormatError(
                        f"chunk {c.index} decodes to {len(block)} bytes, not {c.length_bytes}"
                    )
                blocks.append(block)
            original = b"".join(blocks)
            group.verify(original)
            digest.update(original)
            out.write(original)
            bar.update(len(original))
    reader.verify_original(digest.digest())
    return total


def _summary(mode: str, s: dict, input_path: str, output_path: str) -> str:
    if mode == "decompress":
        return f"{output_path}: {s['raw_bytes']:,} bytes, {s['mb_per_s']:.3f} MB/s, verified"
    if not s["raw_bytes"]:
        return f"{input_path}: empty, {s['compressed_bytes']:,} bytes of container"
    raw = f", {s['raw_chunks']} of {s['num_chunks']} chunks stored raw" if s["raw_chunks"] else ""
    # The ideal code length is the float model's log-loss only on the float path; on the
    # portable one it is that of the integer model's tables.
    ideal = "integer tables' ideal" if s.get("path") == "integer" else "model's log-loss"
    return (
        f"{input_path}: {s['raw_bytes']:,} -> {s['compressed_bytes']:,} bytes, ratio "
        f"{s['ratio']:.4f}, {s['bits_per_byte']:.4f} bits/byte ({ideal} "
        f"{s['ideal_bits'] / s['raw_bytes']:.4f}){raw}, {s['mb_per_s']:.3f} MB/s"
    )


def main(argv):
    FLAGS = flags.FLAGS  # noqa: N806
    if len(argv) != 4 or argv[1] not in ("compress", "decompress"):
        raise app.UsageError(
            "usage: compress.py compress|decompress --workdir=RUN|--model=hf:PATH INPUT OUTPUT"
        )
    if (FLAGS.workdir is None) == (FLAGS.model is None):
        raise app.UsageError("give --workdir=RUN_DIR (a training run) or --model=hf:PATH, one.")
    if FLAGS.model is not None and not FLAGS.model.startswith(compressors.HF_PREFIX):
        raise app.UsageError(
            f"--model takes hf:PATH (a Hugging Face model directory), got {FLAGS.model!r}."
        )
    model = FLAGS.workdir or FLAGS.model
    mode, input_path, output_path = argv[1:]
    numerics.configure_coding()  # before JAX starts its backend
    cli.quiet_logging()
    common = {"step": FLAGS.step, "progress": FLAGS.progress, "force": FLAGS.force}
    if mode == "compress":
        portable = FLAGS.portable if FLAGS["portable"].present else None  # None: the model's
        s = compress_file(
            model,
            input_path,
            output_path,
            FLAGS.lanes,
            FLAGS.chunk_size,
            portable=portable,
            kv_dtype=FLAGS.kv_cache,
            top_k=FLAGS.top_k,
            dtype=FLAGS.dtype,
            **common,
        )
    else:
        s = decompress_file(model, input_path, output_path, **common)
    print(
        _summary(mode, s, input_path, output_path),
        file=sys.stderr if output_path == "-" else sys.stdout,
    )


def _define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Training run directory (its newest checkpoint).")
    flags.DEFINE_string(
        "model",
        None,
        "hf:PATH, a pretrained model in the Hugging Face layout (instead of --workdir).",
    )
    flags.DEFINE_enum(
        "dtype",
        "float32",
        ["float32", "bfloat16"],
        "hf: models: parameter and compute dtype (recorded; decompress follows the stream).",
    )
    flags.DEFINE_integer(
        "top_k",
        0,
        "hf: models: code under the top-k tables with an escape (the paper's k = 100); 0 = the "
        "whole vocabulary (smaller files).",
        lower_bound=0,
    )
    flags.DEFINE_integer(
        "lanes",
        DEFAULT_LANES,
        "Chunks coded together (stored in the stream; its decoder needs their memory); "
        "0 chooses from the device's memory (64 on a CPU).",
        lower_bound=0,
    )
    flags.DEFINE_integer(
        "chunk_size", 0, "Bytes per chunk; 0 = the model's context.", lower_bound=0
    )
    flags.DEFINE_integer("step", None, "Checkpoint step to use (default: newest).")
    flags.DEFINE_bool("progress", True, "Show a progress bar.")
    flags.DEFINE_bool(
        "force",
        False,
        "Replace OUTPUT if it is an existing file (never INPUT; a FIFO or a device such as "
        "/dev/null is written into, like standard output).",
    )
    flags.DEFINE_bool(
        "portable",
        True,
        "Code with the integer-only model: streams decode on any machine (--noportable: the "
        "float model, which decodes only where its floats are the same). Default: on for "
        "training runs; hf: models have the float path only.",
    )
    flags.DEFINE_enum(
        "kv_cache",
        "",
        ["", "float32", "bfloat16", "int8"],
        "--noportable: the KV cache's dtype ('' = the model's compute dtype).",
    )


if __name__ == "__main__":
    cli.run(main, define_flags=_define_flags)
