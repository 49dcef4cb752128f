r"""Exact lossless compression with a trained language model.

  python compress.py compress --workdir=RUN_DIR INPUT OUTPUT
  python compress.py decompress --workdir=RUN_DIR INPUT OUTPUT

RUN_DIR is a training run's workdir (train.py). Any bytes work: text, images, audio, binary,
empty files. Input is read and output written in groups of `--lanes` chunks, so files larger
than memory stream through. Output appears only when complete; on any error (wrong model,
truncated or corrupted stream) the command prints one line and exits with status 1, leaving no
output file behind.

Streams decode exactly only with the same run, the same jax version and the same kind of
device (CPU or GPU) that made them, since those fix the floats the model computes; the stream
records all three and decompression refuses a mismatch up front. See models/lm_coder.py.
"""

import hashlib
import json
import os
import pathlib
import struct
import sys
import time

import jax
import numpy as np
from absl import app, flags, logging

import runs
from coding import container, rans
from data import corpus  # noqa: F401  (tests use compress.corpus)
from models import lm_coder

_BLOB = struct.Struct("<4s32sIIBB16s8s")  # tag, model, lanes, chunk, precision, blocks, jax, device
_TAG = b"LMC1"


def model_fingerprint(config, params, step: int, tokenizer_file: bytes = b"") -> bytes:
    """sha256 over the model config, tokenizer (name and trained file), checkpoint step and
    every parameter's bytes."""
    digest = hashlib.sha256()
    digest.update(json.dumps(config.model.to_dict(), sort_keys=True).encode())
    digest.update(config.tokenizer.encode())
    digest.update(hashlib.sha256(tokenizer_file).digest())
    digest.update(str(step).encode())
    for path, leaf in sorted(
        jax.tree_util.tree_flatten_with_path(params)[0], key=lambda kv: jax.tree_util.keystr(kv[0])
    ):
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.digest()


def _environment() -> tuple[bytes, bytes]:
    """(jax version, backend), NUL-padded as stored in the stream."""
    return jax.__version__.encode()[:16].ljust(16, b"\0"), jax.default_backend().encode()[:8].ljust(
        8, b"\0"
    )


def _text(field: bytes) -> str:
    return field.rstrip(b"\0").decode(errors="replace")


def _pack_blob(model_sha: bytes, shape: lm_coder.CoderShape) -> bytes:
    jax_version, device = _environment()
    return _BLOB.pack(
        _TAG,
        model_sha,
        shape.lanes,
        shape.chunk_tokens,
        shape.precision_bits,
        shape.attention_blocks,
        jax_version,
        device,
    )


def _unpack_blob(blob: bytes, model_sha: bytes) -> lm_coder.CoderShape:
    """Parses the stream's fingerprint and checks it against this model and environment."""
    if len(blob) != _BLOB.size or not blob.startswith(_TAG):
        raise container.FormatError("not a stream made by compress.py (unknown fingerprint)")
    _, sha, lanes, chunk, precision, blocks, jax_version, device = _BLOB.unpack(blob)
    if sha != model_sha:
        raise container.FormatError(
            "this stream was made by a different model (or checkpoint): decompress with the "
            "run and --step that compressed it"
        )
    here_jax, here_device = _environment()
    if (jax_version, device) != (here_jax, here_device):
        raise container.FormatError(
            f"this stream was made with jax {_text(jax_version)} on {_text(device)}, this is "
            f"jax {_text(here_jax)} on {_text(here_device)}: exact decoding needs the same"
        )
    if lanes < 1 or chunk < 1 or blocks < 1 or not 1 <= precision <= 16:
        raise container.FormatError(f"corrupted fingerprint (lanes={lanes}, chunk={chunk})")
    return lm_coder.CoderShape(lanes, chunk, precision_bits=precision, attention_blocks=blocks)


class _Progress:
    """A tqdm bar over bytes when enabled, else nothing."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _load(workdir: str, step: int | None):
    """Returns (model config, params, tokenizer, fingerprint) of a run."""
    config = runs.load_config(workdir)
    cfg, params, step = runs.restore_params(workdir, step)
    tokenizer = runs.load_tokenizer(workdir, config)
    tokenizer_path = pathlib.Path(workdir) / runs.TOKENIZER_FILE
    tokenizer_file = tokenizer_path.read_bytes() if tokenizer.name != "bytes" else b""
    return cfg, params, tokenizer, model_fingerprint(config, params, step, tokenizer_file)


def _tokenize_group(tokenizer, block: bytes, lanes: int, chunk: int):
    """Cuts `block` into `lanes` chunks of `chunk` bytes and tokenises each on its own.

    Returns (tokens int32 [lanes, chunk], token counts [lanes], byte counts [lanes]); a chunk
    never has more tokens than bytes.
    """
    tokens = np.zeros((lanes, chunk), np.int32)
    num_tokens = np.zeros(lanes, np.int32)
    num_bytes = np.zeros(lanes, np.int32)
    for i in range(lanes):
        piece = block[i * chunk : (i + 1) * chunk]
        ids = tokenizer.encode(piece)
        tokens[i, : len(ids)], num_tokens[i], num_bytes[i] = ids, len(ids), len(piece)
    return tokens, num_tokens, num_bytes


def compress_file(
    workdir: str,
    input_path: str,
    output_path: str,
    lanes: int = 64,
    chunk_size: int = 0,
    step: int | None = None,
    progress: bool = False,
) -> dict:
    """Compresses `input_path` into `output_path` with the run in `workdir`.

    Returns:
      Summary: raw, compressed and coded-payload bytes, chunks, ratio, bits per byte, ideal bits
      (the model's sum of -log2 p), seconds and MB/s.

    Raises:
      ValueError, FileNotFoundError: bad arguments or run.
    """
    cfg, params, tokenizer, model_sha = _load(workdir, step)
    shape = lm_coder.CoderShape(lanes=lanes, chunk_tokens=chunk_size or cfg.context_length)
    coder = lm_coder.LMCoder(cfg, params, shape)
    chunk = shape.chunk_tokens
    raw_bytes = os.path.getsize(input_path)
    start, ideal_bits, payload_bytes = time.perf_counter(), 0.0, 0
    digest = hashlib.sha256()
    bar = _Progress(raw_bytes, progress, "compress")
    with open(input_path, "rb") as src, container.atomic_output(output_path) as out:
        writer = container.ContainerWriter(out, _pack_blob(model_sha, shape), chunk, raw_bytes)
        while block := src.read(lanes * chunk):
            digest.update(block)
            tokens, lengths, num_bytes = _tokenize_group(tokenizer, block, lanes, chunk)
            words, num_words, bits = coder.encode(tokens, lengths)
            ideal_bits += float(bits.sum())
            for i in np.flatnonzero(num_bytes):
                payload = rans.words_to_bytes(words[i, : num_words[i]])
                writer.write_chunk(payload, int(lengths[i]))
                payload_bytes += len(payload)
            bar.update(len(block))
        writer.finish(digest.digest())
        compressed_bytes = out.tell()
    bar.close()
    seconds = time.perf_counter() - start
    return {
        "raw_bytes": raw_bytes,
        "compressed_bytes": compressed_bytes,
        "payload_bytes": payload_bytes,
        "num_chunks": -(-raw_bytes // chunk),
        "ratio": compressed_bytes / raw_bytes if raw_bytes else float("nan"),
        "bits_per_byte": 8 * compressed_bytes / raw_bytes if raw_bytes else float("nan"),
        "ideal_bits": ideal_bits,
        "seconds": seconds,
        "mb_per_s": raw_bytes / 1e6 / seconds,
    }


def decompress_file(
    workdir: str,
    input_path: str,
    output_path: str,
    step: int | None = None,
    progress: bool = False,
) -> dict:
    """Decompresses `input_path` (made by `compress_file` with the same run) into `output_path`.

    Raises:
      container.FormatError: wrong model or environment, truncated or corrupted stream.
      rans.CorruptStreamError: a chunk failed its decoding checks.
    """
    cfg, params, tokenizer, model_sha = _load(workdir, step)
    start = time.perf_counter()
    with open(input_path, "rb") as src:
        reader = container.ContainerReader(src)
        shape = _unpack_blob(reader.header.fingerprint, model_sha)
        if reader.header.chunk_size_bytes != shape.chunk_tokens:
            raise container.FormatError("chunk size in header and fingerprint differ")
        coder = lm_coder.LMCoder(cfg, params, shape)
        bar = _Progress(reader.header.original_length_bytes, progress, "decompress")
        digest = hashlib.sha256()
        with container.atomic_output(output_path) as out:
            chunks = reader.chunks()
            for first in range(0, reader.header.num_chunks, shape.lanes):
                group = [
                    next(chunks) for _ in range(min(shape.lanes, reader.header.num_chunks - first))
                ]
                lengths = np.zeros(shape.lanes, np.int32)
                streams = []
                for i, c in enumerate(group):
                    if tokenizer.name == "bytes" and c.num_symbols != c.length_bytes:
                        raise container.FormatError(f"chunk {c.index}: symbol count != length")
                    if len(c.payload) > 2 * coder.capacity_words:
                        raise container.FormatError(f"chunk {c.index}: payload too long")
                    lengths[i] = c.num_symbols
                    streams.append(rans.bytes_to_words(c.payload))
                streams += [np.zeros(0, np.uint16)] * (shape.lanes - len(group))
                words, num_words = rans.pad_streams(streams)
                tokens, errors = coder.decode(words, num_words, lengths)
                for i in np.flatnonzero(errors[: len(group)]):  # padding lanes have no stream
                    why = rans.describe_errors(int(errors[i]))
                    raise rans.CorruptStreamError(f"chunk {first + i} failed to decode: {why}")
                for i, c in enumerate(group):
                    block = tokenizer.decode(tokens[i, : lengths[i]])
                    if len(block) != c.length_bytes:
                        raise container.FormatError(
                            f"chunk {c.index} decodes to {len(block)} bytes, not {c.length_bytes}"
                        )
                    digest.update(block)
                    out.write(block)
                    bar.update(len(block))
            reader.verify_original(digest.digest())
            raw_bytes = out.tell()
        bar.close()
    seconds = time.perf_counter() - start
    return {"raw_bytes": raw_bytes, "seconds": seconds, "mb_per_s": raw_bytes / 1e6 / seconds}


def _define_flags() -> None:
    """Defined here rather than at import, so tests can import this module beside train.py."""
    flags.DEFINE_string("workdir", None, "Training run directory (its newest checkpoint).")
    flags.DEFINE_integer("lanes", 64, "Chunks coded together (compress; stored in the stream).")
    flags.DEFINE_integer("chunk_size", 0, "Bytes per chunk; 0 = the model's context.")
    flags.DEFINE_integer("step", None, "Checkpoint step to use (default: newest).")
    flags.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv):
    FLAGS = flags.FLAGS  # noqa: N806
    if len(argv) != 4 or argv[1] not in ("compress", "decompress"):
        raise app.UsageError("usage: compress.py compress|decompress --workdir=RUN INPUT OUTPUT")
    if FLAGS.workdir is None:
        raise app.UsageError("--workdir is required.")
    mode, input_path, output_path = argv[1:]
    logging.set_verbosity(logging.ERROR)  # orbax logs restores at INFO and WARNING
    try:
        if os.path.abspath(input_path) == os.path.abspath(output_path):
            raise ValueError("INPUT and OUTPUT must differ.")
        if mode == "compress":
            s = compress_file(
                FLAGS.workdir,
                input_path,
                output_path,
                FLAGS.lanes,
                FLAGS.chunk_size,
                FLAGS.step,
                FLAGS.progress,
            )
            print(
                f"{input_path}: {s['raw_bytes']:,} -> {s['compressed_bytes']:,} bytes, ratio "
                f"{s['ratio']:.4f}, {s['bits_per_byte']:.4f} bits/byte (ideal "
                f"{s['ideal_bits'] / max(1, s['raw_bytes']):.4f}), {s['mb_per_s']:.3f} MB/s"
            )
        else:
            s = decompress_file(FLAGS.workdir, input_path, output_path, FLAGS.step, FLAGS.progress)
            print(f"{output_path}: {s['raw_bytes']:,} bytes, {s['mb_per_s']:.3f} MB/s, verified")
    except (ValueError, OSError) as e:  # FormatError and CorruptStreamError are ValueErrors
        print(f"{mode} failed: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
