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

import collections
import hashlib
import json
import os
import pathlib
import sys
import time
from collections.abc import Iterator
from typing import BinaryIO

import jax
from absl import app, flags, logging
from tqdm import tqdm

import runs
from coding import container
from models import lm_coder
from training import checkpoints


def _load(workdir: str, step: int | None):
    """Returns (model config, params, tokenizer, model fingerprint) of a run's checkpoint."""
    config = runs.load_config(workdir)
    model_cfg, params, step = checkpoints.restore_params(workdir, step)
    tokenizer = runs.load_tokenizer(workdir, config)
    tokenizer_path = pathlib.Path(workdir) / runs.TOKENIZER_FILE
    tokenizer_file = tokenizer_path.read_bytes() if tokenizer.name != "bytes" else b""
    description = (
        json.dumps(config.model.to_dict(), sort_keys=True).encode()
        + config.tokenizer.encode()
        + hashlib.sha256(tokenizer_file).digest()
        + str(step).encode()
    )
    return model_cfg, params, tokenizer, lm_coder.params_sha256(description, params)


def _stream_info(model_sha: bytes, shape: lm_coder.CoderShape) -> container.StreamInfo:
    return container.StreamInfo(
        model_sha,
        shape.lanes,
        shape.chunk_tokens,
        shape.precision_bits,
        shape.attention_blocks,
        jax.__version__,
        jax.default_backend(),
    )


def _read_pieces(src: BinaryIO, size: int, digest, bar) -> Iterator[bytes]:
    """Yields `src` in pieces of `size` bytes, hashing and counting them."""
    while piece := src.read(size):
        digest.update(piece)
        bar.update(len(piece))
        yield piece


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
    model_cfg, params, tokenizer, model_sha = _load(workdir, step)
    shape = lm_coder.CoderShape(lanes=lanes, chunk_tokens=chunk_size or model_cfg.context_length)
    coder = lm_coder.LMCoder(model_cfg, params, shape)
    chunk = shape.chunk_tokens
    raw_bytes = os.path.getsize(input_path)
    start, ideal_bits, payload_bytes = time.perf_counter(), 0.0, 0
    digest = hashlib.sha256()
    with (
        open(input_path, "rb") as src,
        container.atomic_output(output_path) as out,
        tqdm(
            total=raw_bytes, unit="B", unit_scale=True, desc="compress", disable=not progress
        ) as bar,
    ):
        info = _stream_info(model_sha, shape)
        writer = container.ContainerWriter(out, info.pack(), chunk, raw_bytes)
        pieces = _read_pieces(src, chunk, digest, bar)
        for coded in coder.encode_chunks(tokenizer.encode(piece) for piece in pieces):
            writer.write_chunk(coded.payload, coded.num_tokens)
            ideal_bits += coded.bits
            payload_bytes += len(coded.payload)
        writer.finish(digest.digest())
        compressed_bytes = out.tell()
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
      coding.range_coder.CorruptStreamError: a chunk failed its decoding checks.
    """
    model_cfg, params, tokenizer, model_sha = _load(workdir, step)
    start = time.perf_counter()
    with open(input_path, "rb") as src:
        reader = container.ContainerReader(src)
        info = container.StreamInfo.unpack(reader.header.fingerprint)
        info.check_decodable(_stream_info(model_sha, lm_coder.CoderShape(1, 1)))
        if reader.header.chunk_size_bytes != info.chunk_tokens:
            raise container.FormatError("chunk size in header and fingerprint differ")
        shape = lm_coder.CoderShape(
            info.lanes, info.chunk_tokens, info.precision_bits, info.attention_blocks
        )
        coder = lm_coder.LMCoder(model_cfg, params, shape)
        pending = collections.deque()

        def streams():
            for c in reader.chunks():
                if tokenizer.name == "bytes" and c.num_symbols != c.length_bytes:
                    raise container.FormatError(f"chunk {c.index}: symbol count != length")
                pending.append(c)
                yield c.payload, c.num_symbols

        digest = hashlib.sha256()
        total = reader.header.original_length_bytes
        with (
            container.atomic_output(output_path) as out,
            tqdm(
                total=total, unit="B", unit_scale=True, desc="decompress", disable=not progress
            ) as bar,
        ):
            for tokens in coder.decode_chunks(streams()):
                c = pending.popleft()
                block = tokenizer.decode(tokens)
                if len(block) != c.length_bytes:
                    raise container.FormatError(
                        f"chunk {c.index} decodes to {len(block)} bytes, not {c.length_bytes}"
                    )
                digest.update(block)
                out.write(block)
                bar.update(len(block))
            reader.verify_original(digest.digest())
            raw_bytes = out.tell()
    seconds = time.perf_counter() - start
    return {"raw_bytes": raw_bytes, "seconds": seconds, "mb_per_s": raw_bytes / 1e6 / seconds}


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
    flags.DEFINE_string("workdir", None, "Training run directory (its newest checkpoint).")
    flags.DEFINE_integer("lanes", 64, "Chunks coded together (compress; stored in the stream).")
    flags.DEFINE_integer("chunk_size", 0, "Bytes per chunk; 0 = the model's context.")
    flags.DEFINE_integer("step", None, "Checkpoint step to use (default: newest).")
    flags.DEFINE_bool("progress", True, "Show a progress bar.")
    app.run(main)
