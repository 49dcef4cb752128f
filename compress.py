r"""Exact lossless compression with a trained language model.

  python compress.py compress --workdir=RUN_DIR INPUT OUTPUT
  python compress.py decompress --workdir=RUN_DIR INPUT OUTPUT
  cat INPUT | python compress.py compress --workdir=RUN_DIR - - > OUTPUT

RUN_DIR is a training run's workdir (train.py). Any bytes work: text, images, audio, binary,
empty files. Input is read and output written one group of `--lanes` chunks at a time, so files
larger than memory stream through. A chunk the model would not make shorter is stored as it is,
so no file grows by more than a few bytes per chunk. Output files appear only when complete
(`--force` to replace one that exists); on any error, Ctrl-C or SIGTERM the command prints one
line, exits non-zero and leaves no output file behind. With `-` the input is read from standard
input (spooled to a temporary file) and the output written to standard output, the summary then
going to standard error; decompressing to standard output writes data before the final checksum
can be checked, so a mismatch found at the end exits with status 1 and says so.

Streams decode exactly only where the model's floats are the same as the encoder's: the same
run and checkpoint, jax version, kind of device, CPU instruction set and numerics flags
(models/numerics.py). The stream records them and decompression refuses a mismatch up front,
naming it. See models/lm_coder.py for how encoder and decoder share their tables.
"""

import contextlib
import hashlib
import json
import os
import pathlib
import sys
import time
from collections.abc import Iterator
from typing import BinaryIO

from absl import app, flags

import cli
import runs
from coding import container
from models import integer, lm_coder, numerics
from training import checkpoints

DEFAULT_LANES = 0  # 0: chosen from the device's memory (lm_coder.default_lanes)


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
    return model_cfg, params, tokenizer, lm_coder.params_sha256(description, params).hex()


def _pieces(src: BinaryIO, size: int, digest, progress) -> Iterator[bytes]:
    """Yields `src` in pieces of `size` bytes, hashing and counting them."""
    while piece := src.read(size):
        digest.update(piece)
        progress.update(len(piece))
        yield piece


@contextlib.contextmanager
def _opened(path: str, mode: str, force: bool = False):
    """A file to read or write; '-' is standard input (spooled) or output. Files written appear
    only complete (`container.atomic_output`); an existing one is replaced only with `force`."""
    if path == "-":
        yield container.spool(sys.stdin.buffer) if mode == "r" else sys.stdout.buffer
    elif mode == "r":
        with open(path, "rb") as f:
            yield f
    else:
        if os.path.exists(path) and not force:
            raise FileExistsError(f"{path} exists: pass --force to replace it.")
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise FileNotFoundError(f"no directory {os.path.dirname(path) or '.'} for {path}.")
        with container.atomic_output(path) as f:
            yield f


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not enabled)


def compress_file(
    workdir: str,
    input_path: str,
    output_path: str,
    lanes: int = DEFAULT_LANES,
    chunk_size: int = 0,
    step: int | None = None,
    progress: bool = False,
    force: bool = False,
    portable: bool = True,
    kv_dtype: str = "",
) -> dict:
    """Compresses `input_path` into `output_path` ('-': standard input / output).

    With `portable` (the default) the model's tables come from its integer-only version
    (models/integer.py), so the stream decodes on any machine; without, from its float32
    probabilities, which decode only where the floats are the same (the stream says which);
    `kv_dtype` ('bfloat16', 'int8') shrinks that path's KV cache. `lanes` 0 picks them from the
    device's memory.

    Returns:
      Summary: raw and compressed bytes, coded-payload bytes, chunks (and how many stored raw),
      ratio, bits per byte, ideal bits (the model's sum of -log2 p), seconds and MB/s.

    Raises:
      ValueError, OSError: bad arguments, run, or an existing output without `force`.
    """
    model_cfg, params, tokenizer, model_sha = _load(workdir, step)
    start, ideal_bits, payload_bytes, num_raw = time.perf_counter(), 0.0, 0, 0
    digest = hashlib.sha256()
    with _opened(input_path, "r") as src, _opened(output_path, "w", force) as out:
        raw_bytes = src.seek(0, os.SEEK_END)
        src.seek(0)
        chunk = chunk_size or model_cfg.context_length
        num_chunks = -(-raw_bytes // chunk)
        lanes = lanes or lm_coder.default_lanes(model_cfg, chunk, portable)
        shape = lm_coder.CoderShape(
            lanes=max(1, min(lanes, num_chunks)),
            chunk_tokens=chunk,
            portable=portable,
            kv_dtype=kv_dtype,
        )
        coder = lm_coder.LMCoder(model_cfg, params, shape)
        symbols = tokenizer.name != "bytes"  # BPE: a chunk's token count is not its byte count
        info = _stream_info(model_sha, coder)
        writer = container.ContainerWriter(
            out, info.pack(), chunk, raw_bytes, shape.lanes, ("symbols",) if symbols else ()
        )
        with _bar(raw_bytes, "compress", progress) as bar:
            for pieces in lm_coder.batched(_pieces(src, chunk, digest, bar), shape.lanes):
                coded = list(coder.encode_chunks([tokenizer.encode(p) for p in pieces]))
                raw = writer.write_group(
                    [c.payload for c in coded],
                    b"".join(pieces),
                    [c.num_tokens for c in coded] if symbols else (),
                )
                ideal_bits += sum(c.bits for c in coded)
                payload_bytes += sum(len(c.payload) for c in coded)
                num_raw += sum(raw)
        writer.finish(digest.digest())
        compressed_bytes = writer.bytes_written
    seconds = time.perf_counter() - start
    return {
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


def _stream_info(model_sha: str, coder: lm_coder.LMCoder) -> container.StreamInfo:
    s = coder.shape
    settings = {
        "lanes": s.lanes,
        "chunk_tokens": s.chunk_tokens,
        "precision_bits": s.precision_bits,
        "attention_blocks": s.attention_blocks,
        "low_bits": s.low_bits,
        "path": "integer" if s.portable else "float",
        "kv_dtype": s.kv_dtype,
    }
    if s.portable:  # tables the same everywhere: only their definition's version matters
        return container.StreamInfo(model_sha, settings, {"integer_tables": integer.TABLES_VERSION})
    return container.StreamInfo(model_sha, settings, numerics.environment())


def _coder_for(info: container.StreamInfo, header: container.Header, model_cfg, params):
    """The coder a stream was made with, after checking its fields against what an encoder
    could have written for this file and against this device's memory.

    Raises:
      container.FormatError: impossible or unaffordable fields (one line each).
    """
    c = info.coder
    try:
        shape = lm_coder.CoderShape(
            int(c["lanes"]),
            int(c["chunk_tokens"]),
            int(c["precision_bits"]),
            int(c["attention_blocks"]),
            int(c["low_bits"]),
            portable=c.get("path") == "integer",
            kv_dtype=str(c.get("kv_dtype", "")),
        )
        if c.get("path") not in ("float", "integer"):
            raise ValueError(f"the {c.get('path')!r} coding path is not supported by this release")
        if shape.lanes > max(1, header.num_chunks):
            raise ValueError(f"{shape.lanes} lanes for {header.num_chunks} chunks")
        if header.group_chunks != shape.lanes or header.chunk_size_bytes != shape.chunk_tokens:
            raise ValueError("the header's group and chunk sizes differ from the coder's")
        coder = lm_coder.LMCoder(model_cfg, params, shape)
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
    workdir: str,
    input_path: str,
    output_path: str,
    step: int | None = None,
    progress: bool = False,
    force: bool = False,
) -> dict:
    """Decompresses `input_path` (made by `compress_file` with the same run) into `output_path`.

    Raises:
      container.FormatError: wrong model or environment, truncated or corrupted stream (one
        line naming the damaged group).
      coding.range_coder.CorruptStreamError: a chunk failed its decoding checks.
    """
    model_cfg, params, tokenizer, model_sha = _load(workdir, step)
    start = time.perf_counter()
    with _opened(input_path, "r") as src:
        reader = container.ContainerReader(src)
        info = container.StreamInfo.unpack(reader.header.info)
        if info.model != model_sha:
            raise container.FormatError(
                "this stream was made by a different model (or checkpoint): decompress with the "
                "run and --step that compressed it"
            )
        _check_environment(info)
        coder = _coder_for(info, reader.header, model_cfg, params)
        reader.max_payload_bytes = coder.capacity_bytes
        with _opened(output_path, "w", force) as out:
            raw_bytes = _decode_groups(reader, coder, tokenizer, out, progress)
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


def _decode_groups(reader, coder, tokenizer, out, progress: bool) -> int:
    """Decodes every group into `out`, checking each against its crc32 and all against the
    sha256. Returns the bytes written."""
    digest, total = hashlib.sha256(), reader.header.original_length_bytes
    with _bar(total, "decompress", progress) as bar:
        for group in reader.groups():
            if tokenizer.name == "bytes":
                for c in group.chunks:
                    if not c.raw and c.symbols != c.length_bytes:
                        raise container.FormatError(f"chunk {c.index}: symbol count != length")
            items = [
                (c.payload, len(ids), ids) if c.raw else (c.payload, c.symbols, None)
                for c in group.chunks
                for ids in [tokenizer.encode(c.payload) if c.raw else None]
            ]
            blocks = []
            for c, tokens in zip(group.chunks, coder.decode_chunks(items), strict=True):
                block = c.payload if c.raw else tokenizer.decode(tokens)
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
    return (
        f"{input_path}: {s['raw_bytes']:,} -> {s['compressed_bytes']:,} bytes, ratio "
        f"{s['ratio']:.4f}, {s['bits_per_byte']:.4f} bits/byte (model's log-loss "
        f"{s['ideal_bits'] / s['raw_bytes']:.4f}){raw}, {s['mb_per_s']:.3f} MB/s"
    )


def main(argv):
    FLAGS = flags.FLAGS  # noqa: N806
    if len(argv) != 4 or argv[1] not in ("compress", "decompress"):
        raise app.UsageError("usage: compress.py compress|decompress --workdir=RUN INPUT OUTPUT")
    if FLAGS.workdir is None:
        raise app.UsageError("--workdir is required.")
    mode, input_path, output_path = argv[1:]
    cli.quiet_logging()
    if input_path != "-" and os.path.abspath(input_path) == os.path.abspath(output_path):
        raise ValueError("INPUT and OUTPUT must differ.")
    if input_path != "-" and not os.path.isfile(input_path):
        raise FileNotFoundError(f"no input file {input_path}.")
    if output_path != "-":  # before the model loads: fail before any work
        if not os.path.isdir(os.path.dirname(os.path.abspath(output_path))):
            raise FileNotFoundError(
                f"no directory {os.path.dirname(output_path)} for {output_path}."
            )
        if os.path.exists(output_path) and not FLAGS.force:
            raise FileExistsError(f"{output_path} exists: pass --force to replace it.")
    common = {"step": FLAGS.step, "progress": FLAGS.progress, "force": FLAGS.force}
    if mode == "compress":
        s = compress_file(
            FLAGS.workdir,
            input_path,
            output_path,
            FLAGS.lanes,
            FLAGS.chunk_size,
            portable=FLAGS.portable,
            kv_dtype=FLAGS.kv_cache,
            **common,
        )
    else:
        s = decompress_file(FLAGS.workdir, input_path, output_path, **common)
    print(
        _summary(mode, s, input_path, output_path),
        file=sys.stderr if output_path == "-" else sys.stdout,
    )


def _define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Training run directory (its newest checkpoint).")
    flags.DEFINE_integer(
        "lanes",
        DEFAULT_LANES,
        "Chunks coded together (stored in the stream; its decoder needs their memory); "
        "0 chooses from the device's memory (64 on a CPU).",
    )
    flags.DEFINE_integer("chunk_size", 0, "Bytes per chunk; 0 = the model's context.")
    flags.DEFINE_integer("step", None, "Checkpoint step to use (default: newest).")
    flags.DEFINE_bool("progress", True, "Show a progress bar.")
    flags.DEFINE_bool("force", False, "Replace OUTPUT if it exists.")
    flags.DEFINE_bool(
        "portable",
        True,
        "Code with the integer-only model: streams decode on any machine (--noportable: the "
        "float model, which decodes only where its floats are the same).",
    )
    flags.DEFINE_enum(
        "kv_cache",
        "",
        ["", "float32", "bfloat16", "int8"],
        "--noportable: the KV cache's dtype ('' = the model's compute dtype).",
    )


if __name__ == "__main__":
    cli.run(main, define_flags=_define_flags)
